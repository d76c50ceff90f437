"""Mixed categorical/numeric tables: Palmer penguins and the UCI Adult census data (carried here).

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


# The UCI release, carried unchanged (xz-compressed) as package data. The digests are those of
# the decompressed files: a damaged or altered copy is refused rather than silently certified.
ADULT_FILES = {
    "adult.data": ("5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d", 32_561),
    "adult.test": ("a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05", 16_281),
}
ADULT_LABEL_COLUMNS = ("income", "income-per-year", "class")  # UCI, fairness, OpenML
ADULT_LABELS = ("<=50K", ">50K")  # coded 0 and 1, in this (sorted) order
ADULT_ATTRIBUTION = (
    "Becker, B. and Kohavi, R. (1996), Adult, UCI Machine Learning Repository, "
    "doi:10.24432/C5XW20. Licence: Creative Commons Attribution 4.0 International (CC BY 4.0); "
    "the files are carried unchanged, xz-compressed (see NOTICE)")


def bundled_adult_text(name: str) -> str:
    """The text of a bundled UCI file (``"adult.data"`` or ``"adult.test"``), checked against its
    SHA-256.

    Raises
    ------
    ValueError
        When the bundled copy does not match its recorded digest.
    """
    import hashlib
    import lzma
    from importlib import resources

    if name not in ADULT_FILES:
        raise ValueError(f"name must be one of {sorted(ADULT_FILES)}, got {name!r}")
    raw = lzma.decompress(resources.files(__package__).joinpath("data", f"{name}.xz")
                          .read_bytes())
    digest, _ = ADULT_FILES[name]
    found = hashlib.sha256(raw).hexdigest()
    if found != digest:
        raise ValueError(f"the bundled {name} is damaged or altered: SHA-256 {found}, expected "
                         f"{digest} (reinstall hybridcert)")
    return raw.decode("ascii")


def adult_path(path: str | os.PathLike | None = None) -> Path | None:
    """Where the Adult data is read from: ``path``, else ``$HYBRIDCERT_ADULT``, else None (the
    copy bundled with hybridcert).

    Raises
    ------
    ValueError
        When the chosen path is neither a file nor a folder holding ``adult.data`` and
        ``adult.test``.
    """
    if path is not None:
        chosen, origin = Path(path), "path"
    elif os.environ.get("HYBRIDCERT_ADULT"):
        chosen, origin = Path(os.environ["HYBRIDCERT_ADULT"]), "HYBRIDCERT_ADULT"
    else:
        return None
    if chosen.is_file() or (chosen.is_dir() and all((chosen / f).is_file() for f in ADULT_FILES)):
        return chosen
    raise ValueError(f"Adult data not found at {chosen} (from {origin}): expected the UCI "
                     "adult.data file (15 comma-separated columns, no header), a CSV with a "
                     "header (an OpenML export, for instance), or a folder holding adult.data "
                     "and adult.test; without a path the copy bundled with hybridcert is read")


def _adult_rows(text: str, where: str) -> list[dict]:
    """The rows of a UCI file or a CSV export with a header; labels without adult.test's '.'."""
    raw = [[c.strip() for c in row] for row in csv.reader(text.splitlines())
           if row and any(row) and not row[0].startswith("|")]  # adult.test's '|1x3 ...' line
    header = ADULT_COLUMNS
    if raw and raw[0][0].lower() == "age":  # a CSV export with a header row
        header = ["income" if c in ADULT_LABEL_COLUMNS else c for c in raw[0]]
        raw = raw[1:]
        missing = sorted(set(ADULT_COLUMNS) - set(header))
        if missing:
            raise ValueError(f"{where}: the header lacks the columns {missing}")
    if not raw:
        raise ValueError(f"{where}: no rows (an empty file?); expected the UCI adult.data format "
                         "(15 comma-separated columns, no header) or a CSV with a header row")
    rows = []
    for line, values in enumerate(raw, 1):
        if len(values) != len(header):
            raise ValueError(f"{where}:{line}: expected {len(header)} columns, got {len(values)}")
        row = dict(zip(header, values))
        row["income"] = row["income"].rstrip(".")  # adult.test writes '>50K.'
        rows.append(row)
    # The labels are read as 0 = <=50K, 1 = >50K (the card says so); other strings would be
    # coded by their sort order and silently swap or rename the classes.
    other = sorted({r["income"] for r in rows} - set(ADULT_LABELS))
    if other:
        raise ValueError(f"{where}: the income labels must be {' or '.join(ADULT_LABELS)} "
                         f"(adult.test's trailing '.' is allowed), found {other[:5]}"
                         + (f" and {len(other) - 5} more" if len(other) > 5 else ""))
    return rows


def load_adult(path: str | os.PathLike | None = None, seed: int = 0,
               test_fraction: float | None = None, limit: int | None = None) -> Dataset:
    """The Adult census income data (the paper's tabular experiment).

    By default the UCI release bundled with hybridcert, with its own split: ``adult.data``
    (32,561 rows) for training and ``adult.test`` (16,281 rows) for testing.

    Parameters
    ----------
    path : path, optional
        Your own copy instead (default ``$HYBRIDCERT_ADULT``, then the bundled copy): a
        folder holding the UCI files ``adult.data`` and ``adult.test`` (the official split),
        or one file, split at random (see ``test_fraction``). A file is either in the UCI
        format (comma separated, no header, 15 columns, missing values as ``?``) or a CSV
        with a header row using the UCI column names (the label column may be called
        ``income``, ``income-per-year`` or ``class``).
    seed : int
        Seed of the stratified train/test split of a single file (unused by the official
        split).
    test_fraction : float in [0.01, 0.99], optional
        Share of each label's rows of a single file held out for testing (default 0.3). Not
        accepted with the official split, whose test rows are fixed.
    limit : int, optional
        Keep only the first ``limit`` rows of each file.

    Returns
    -------
    Dataset
        ``x_discrete`` holds the 8 categorical fields as codes (categories in
        sorted order, see ``extras["levels"]``), ``x_continuous`` the 6 numeric
        fields standardised with the training rows' mean and standard
        deviation (``extras["mean"]``, ``extras["std"]``). Labels: 0 = ``<=50K``,
        1 = ``>50K``. The card (``summary()``) lists every field with its arity.
    """
    if test_fraction is not None and (
            isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
            or not 0.01 <= test_fraction <= 0.99):
        raise ValueError(f"test_fraction must lie in [0.01, 0.99], got {test_fraction!r}")
    if limit is not None:
        limit = check_int("limit", limit, minimum=100)  # both labels and splits stay populated
    seed = check_int("seed", seed, minimum=0)
    path = adult_path(path)
    if path is None or path.is_dir():
        if test_fraction is not None:
            raise ValueError("test_fraction applies to a single Adult file; the official split "
                             "(adult.data for training, adult.test for testing) is fixed, "
                             f"got test_fraction={test_fraction!r}")
        if path is None:
            texts = {f: (bundled_adult_text(f), f"the bundled {f}") for f in ADULT_FILES}
        else:
            texts = {f: ((path / f).read_text(), str(path / f)) for f in ADULT_FILES}
        train, test = (_adult_rows(*texts[f])[:limit] for f in ADULT_FILES)
        rows = train + test
        split = np.arange(len(train)), np.arange(len(train), len(rows))
        ids = ([f"adult-train-{i:05d}" for i in range(len(train))]
               + [f"adult-test-{i:05d}" for i in range(len(test))])
        source = ("the UCI release bundled with hybridcert (adult.data and adult.test, checked "
                  "by SHA-256)" if path is None else f"adult.data and adult.test in {path}")
        how = (f"the UCI release's own: adult.data for training ({len(train)} rows), adult.test "
               f"for testing ({len(test)} rows)")
    else:
        test_fraction = 0.3 if test_fraction is None else test_fraction
        rows = _adult_rows(path.read_text(), str(path))[:limit]
        split, ids = None, None
        source = f"{path.name} from your disk"
        how = (f"stratified, {1 - test_fraction:.0%}/{test_fraction:.0%} train/test, from "
               f"numpy.random.default_rng({seed})")
    missing = {c: sum(r[c] == "?" for r in rows) for c in ADULT_CATEGORICAL}
    high = sum(r["income"] == ">50K" for r in rows)
    if high in (0, len(rows)):
        raise ValueError(f"{path or 'the bundled Adult data'}: all {len(rows)} rows are labelled "
                         f"{rows[0]['income']}; both {' and '.join(ADULT_LABELS)} are needed")
    card = "\n".join([
        "What it is. The UCI Adult census income data (1994 US census extract; the paper's "
        "tabular experiment): predict whether a person earns more than $50K a year. Read from "
        f"{source}: {len(rows)} rows.",
        "",
        f"Source and licence. {ADULT_ATTRIBUTION}.",
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
        f" 1 = >50K ({high} rows, {high / max(len(rows), 1):.1%}). Split: {how}.",
    ])
    return _build("adult", rows, ADULT_CATEGORICAL, ADULT_NUMERIC, "income", seed,
                  test_fraction, card, split=split, ids=ids)


def _build(name, rows, categorical, numeric, label, seed, test_fraction, card, split=None,
           ids=None) -> Dataset:
    """Codes, standardised numbers (training statistics only) and a stratified seeded split.

    ``split``, a pair of row-index arrays (train, test), fixes the split instead; ``ids`` names
    the rows (default ``f"{name}-{row:05d}"``). A ``{arities}`` placeholder in ``card`` is
    replaced by the list of categorical fields with their arities.
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
    if split is None:
        rng = np.random.default_rng(seed)
        test = np.sort(np.concatenate([
            rng.permutation(np.flatnonzero(y == k))[: round(test_fraction * np.sum(y == k))]
            for k in range(len(classes))]))
        train = np.setdiff1d(np.arange(len(rows)), test)
    else:
        train, test = split
    ids = [f"{name}-{i:05d}" for i in range(len(rows))] if ids is None else ids
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
        return Split(ids=[ids[i] for i in idx], x_discrete=codes[idx],
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

