"""Mixed categorical/numeric tables: Palmer penguins (bundled) and the Adult census data (loader).

Card (``tabular``)
------------------
What it is. The Palmer penguins table (Gorman, Williams and Fraser 2014), as
shipped by the ``palmerpenguins`` package: 344 penguins of three species from
three islands, 2007-2009. The 11 rows with a missing value are dropped
(333 remain).

Fields. Categorical, each with its own arity: island (3), sex (2), year (3),
coded 0..arity-1 in sorted order. Numeric: bill length, bill depth, flipper
length, body mass, standardised with the training split's mean and standard
deviation (so a certified L2 radius is in units of standard deviations).
Label: species (Adelie, Chinstrap, Gentoo).

Determinism. A stratified 70/30 train/test split from
``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .base import Dataset, Split

PENGUIN_CATEGORICAL = ["island", "sex", "year"]
PENGUIN_NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]

ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income"]
ADULT_CATEGORICAL = ["workclass", "education", "marital-status", "occupation", "relationship",
                     "race", "sex", "native-country"]
ADULT_NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss",
                 "hours-per-week"]


def load_penguins(seed: int = 0) -> Dataset:
    """The bundled ``tabular`` data set (see the module docstring for its card)."""
    from palmerpenguins import load_penguins as _load

    frame = _load().dropna().reset_index(drop=True)
    rows = frame.to_dict("records")
    card = __doc__.split("------------------\n", 1)[1].strip()
    return _build("tabular", rows, PENGUIN_CATEGORICAL, PENGUIN_NUMERIC, "species", seed, 0.3,
                  card)


def load_adult(path: str | os.PathLike | None = None, seed: int = 0, test_fraction: float = 0.3,
               limit: int | None = None) -> Dataset:
    """The Adult census income data (the paper's tabular experiment), read from disk.

    Parameters
    ----------
    path : path, optional
        The UCI ``adult.data`` file (comma separated, no header, 15 columns,
        missing values as ``?``), or an OpenML CSV export with a header row
        using the same column names (``class`` is accepted for ``income``).
        Defaults to the environment variable ``HYBRIDCERT_ADULT``.
    limit : int, optional
        Keep only the first ``limit`` rows.
    """
    path = path or os.environ.get("HYBRIDCERT_ADULT")
    if not path:
        raise ValueError("load_adult needs a path (or HYBRIDCERT_ADULT): the UCI adult.data file "
                         "or an OpenML CSV with columns " + ", ".join(ADULT_COLUMNS))
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Adult data not found at {path}: expected the UCI adult.data file (15 "
                         "comma-separated columns, no header) or an OpenML CSV with a header")
    with path.open(newline="") as fh:
        raw = [[c.strip() for c in row] for row in csv.reader(fh) if row and any(row)]
    if raw and raw[0][0].lower() == "age":  # OpenML export with a header
        header = ["income" if c == "class" else c for c in raw[0]]
        raw = raw[1:]
    else:
        header = ADULT_COLUMNS
    rows = []
    for line, values in enumerate(raw, 1):
        if len(values) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} columns, got {len(values)}")
        row = dict(zip(header, values))
        row["income"] = row["income"].rstrip(".")  # adult.test writes '>50K.'
        rows.append(row)
    if limit is not None:
        rows = rows[:limit]
    card = (f"Adult census income, read from {path.name} ({len(rows)} rows). Categorical: "
            + ", ".join(ADULT_CATEGORICAL) + " (missing values '?' kept as a category). "
            "Numeric (standardised on the training split): " + ", ".join(ADULT_NUMERIC)
            + ". Label: income > 50K.")
    return _build("adult", rows, ADULT_CATEGORICAL, ADULT_NUMERIC, "income", seed,
                  test_fraction, card)


def _build(name, rows, categorical, numeric, label, seed, test_fraction, card) -> Dataset:
    levels = [sorted({str(r[c]) for r in rows}) for c in categorical]
    classes = sorted({str(r[label]) for r in rows})
    codes = np.array([[lv.index(str(r[c])) for c, lv in zip(categorical, levels)] for r in rows],
                     dtype=np.int64)
    values = np.array([[float(r[c]) for c in numeric] for r in rows], dtype=np.float64)
    y = np.array([classes.index(str(r[label])) for r in rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    test = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(y == k))[: round(test_fraction * np.sum(y == k))]
        for k in range(len(classes))]))
    train = np.setdiff1d(np.arange(len(rows)), test)
    mean, std = values[train].mean(axis=0), values[train].std(axis=0)
    scaled = ((values - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    arities = tuple(max(len(lv), 2) for lv in levels)

    def split(idx):
        return Split(ids=[f"{name}-{i:05d}" for i in idx], x_discrete=codes[idx],
                     x_continuous=scaled[idx], y=y[idx])

    return Dataset(name=name, train=split(train), test=split(test), num_classes=len(classes),
                   card=card, class_names=classes, arities=arities,
                   feature_names=list(categorical) + list(numeric),
                   extras={"levels": levels, "mean": mean, "std": std})
