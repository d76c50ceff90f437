"""Containers for the bundled data sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split: ``x_discrete[i]`` (token ids or category codes), ``x_continuous[i]``, ``y[i]``."""

    ids: list[str]
    x_discrete: np.ndarray
    x_continuous: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Dataset:
    """A bundled data set: splits, its card, and what the noise needs to know about it.

    ``vocab`` names the token ids of a text part (the uniform kernel's
    alphabet); ``arities`` gives the number of categories of each categorical
    field of a table.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    card: str
    class_names: list[str]
    vocab: list[str] | None = None
    arities: tuple[int, ...] | None = None
    feature_names: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict, repr=False)

    @property
    def vocab_size(self) -> int | None:
        return None if self.vocab is None else len(self.vocab)

    def summary(self) -> str:
        """The card plus label balance, as markdown."""
        lines = [f"# Data set `{self.name}`", "", self.card, "", "Label balance:", ""]
        for name, split in (("train", self.train), ("test", self.test)):
            counts = np.bincount(split.y, minlength=self.num_classes)
            parts = ", ".join(f"{c} {self.class_names[k]}" for k, c in enumerate(counts))
            lines.append(f"- {name}: {len(split)} examples ({parts})")
        return "\n".join(lines) + "\n"
