"""The Ray executor: same rows as the local one, a killed worker, a restarted driver, failures."""

import functools
import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # each test starts a local Ray cluster

import ray_helpers  # noqa: E402
from hybridcert.cli import build_parser, main  # noqa: E402
from hybridcert.config import RunConfig  # noqa: E402
from hybridcert.distributed import certify_split_ray  # noqa: E402
from hybridcert.run import plan  # noqa: E402
from hybridcert.rundir import read_results  # noqa: E402
from hybridcert.runner import certify_split  # noqa: E402

ARGV = ["certify", "--n", "600", "--n0", "20", "--no-report", "--no-progress"]


@pytest.fixture(scope="module")
def local_ray(model_cache):
    import hybridcert

    # Workers import the same hybridcert as this process (a worktree's, not an editable install's).
    source = str(Path(hybridcert.__file__).resolve().parents[1])
    tests_dir = os.pathsep.join([str(Path(__file__).parent), source])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": tests_dir,
                                       "HYBRIDCERT_CACHE": str(model_cache)}})
    yield
    ray.shutdown()


def rows(path):
    return {k: {f: v for f, v in r.items() if f != "seconds"}
            for k, r in read_results(Path(path) / "results.jsonl").items()}


def plan_for(out, limit):
    args = build_parser().parse_args([*ARGV, "--limit", str(limit), "--out", str(out)])
    return plan(RunConfig.from_args(args))


def test_ray_rows_equal_local_rows_and_the_driver_resumes(local_ray, tmp_path):
    assert main([*ARGV, "--limit", "8", "--out", str(tmp_path / "local")]) == 0
    # A first driver certifies 3 examples and "dies"; a second resumes the same directory.
    assert main([*ARGV, "--executor", "ray", "--limit", "3", "--out", str(tmp_path / "ray")]) == 0
    assert len(rows(tmp_path / "ray")) == 3
    assert main([*ARGV, "--executor", "ray", "--limit", "8", "--out", str(tmp_path / "ray")]) == 0
    lines = (tmp_path / "ray" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(x)["id"] for x in lines}) == 8
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")


def test_a_killed_worker_loses_nothing(local_ray, tmp_path):
    run = plan_for(tmp_path / "killed", 6)
    split, settings = run.split, run.settings()
    flag = str(tmp_path / "killed-once")
    builder = functools.partial(ray_helpers.killing_builder, run.builder, flag)
    certify_split_ray(builder, split, tmp_path / "killed", settings, run.config.estimation,
                      limit=6, progress=False, workers=2)
    assert Path(flag).exists()  # a worker really died
    certify_split(run.builder(), split, tmp_path / "clean", settings, run.config.estimation,
                  limit=6, progress=False)
    lines = (tmp_path / "killed" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len({json.loads(x)["id"] for x in lines}) == 6
    assert rows(tmp_path / "killed") == rows(tmp_path / "clean")


def test_an_example_that_keeps_failing_becomes_a_failed_row(local_ray, tmp_path):
    run = plan_for(tmp_path / "failing", 4)
    split, settings = run.split, run.settings()
    poison = [int(t) for t in split.x_discrete[2]]
    builder = functools.partial(ray_helpers.failing_builder, run.builder, poison)
    certify_split_ray(builder, split, tmp_path / "failing", settings, run.config.estimation,
                      limit=4, progress=False, workers=2, max_retries=2)
    result = read_results(tmp_path / "failing" / "results.jsonl")
    assert len(result) == 4
    failed = [r for r in result.values() if r.get("failed")]
    assert [r["id"] for r in failed] == [split.ids[2]]
    assert "adapter failure on this input" in failed[0]["error"]


def test_the_local_executor_writes_failed_rows_too(tmp_path):
    run = plan_for(tmp_path / "local-failing", 3)
    split, settings = run.split, run.settings()
    smoothed = ray_helpers.failing_builder(run.builder, [int(t) for t in split.x_discrete[1]])
    certify_split(smoothed, split, tmp_path / "local-failing", settings,
                  run.config.estimation, limit=3, progress=False, max_retries=1)
    result = read_results(tmp_path / "local-failing" / "results.jsonl")
    assert [r.get("failed", False) for r in result.values()] == [False, True, False]


def test_the_driver_builds_no_model(local_ray, tmp_path, monkeypatch):
    from hybridcert.models import demo

    def refuse(*args, **kwargs):
        raise AssertionError("the driver built a model")

    # Only this (driver) process is patched: the workers build the model as usual.
    monkeypatch.setattr(demo, "mm_interaction_model", refuse)
    monkeypatch.setattr(demo, "tabular_model", refuse)
    assert main([*ARGV, "--executor", "ray", "--limit", "2", "--out", str(tmp_path / "r")]) == 0
    assert len(rows(tmp_path / "r")) == 2
    assert not any(r.get("failed") for r in rows(tmp_path / "r").values())


def test_ray_actors_certify_sequential_chunks_like_the_local_executor(local_ray, tmp_path):
    # Each actor certifies a chunk of examples through its LookScheduler; every example keeps
    # its noise stream SeedSequence([seed, index]), so the rows are the local executor's.
    target = ["--target", "1:0.5", "--n-max", "3000"]
    assert main([*ARGV, *target, "--limit", "6", "--out", str(tmp_path / "local")]) == 0
    assert main([*ARGV, *target, "--executor", "ray", "--limit", "6",
                 "--out", str(tmp_path / "ray")]) == 0
    local, distributed = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert sorted(local) == sorted(distributed) and len(local) == 6
    for key, row in local.items():
        for field, value in row.items():
            assert distributed[key][field] == value, (key, field)
    assert all(r["sampling"] == "sequential" and not r["failed"] for r in local.values())
