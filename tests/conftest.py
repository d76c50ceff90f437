"""Shared fixtures: one model cache per test session (models train once, never in ~/.cache)."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("model-cache")
    mp.setenv("HYBRIDCERT_CACHE", str(path))
    yield path
    mp.undo()
