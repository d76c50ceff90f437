"""Bundled data sets, built from data carried by hybridcert or its dependencies (nothing is downloaded)."""

from __future__ import annotations

from .base import Dataset, Split
from .mm_interaction import load as load_mm_interaction
from .tabular import load_adult, load_penguins

DATASETS = {"mm-interaction": load_mm_interaction, "tabular": load_penguins, "adult": load_adult}

__all__ = ["DATASETS", "Dataset", "Split", "load_adult", "load_dataset", "load_mm_interaction",
           "load_penguins"]


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A data set by name: ``"mm-interaction"`` (default of the CLI), ``"tabular"`` (penguins) or
    ``"adult"`` (the bundled UCI files, see :func:`load_adult`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](seed=seed)
