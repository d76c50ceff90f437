"""Hugging Face data sets saved with ``save_to_disk``, read as guard examples (nothing is downloaded).

:func:`load_hf_disk` reads a ``Dataset`` or a ``DatasetDict`` (then a split is
named) with :func:`datasets.load_from_disk`, maps its columns to the user's
text, the image and the label, and gives the same raw examples as the other
on-disk loaders (:class:`~hybridcert.datasets.safety.SafetyExample`):

- the text column holds strings; a list of strings (Flickr30k's five
  captions) gives its first one;
- the image column is an ``Image()`` feature (decoded to a PIL image, kept in
  memory) or a string path, relative paths being taken from the data set's
  folder; ``image=None`` reads a text-only set;
- the label column holds 0/1 (1 = unsafe) or booleans; strings and
  ``ClassLabel`` names are mapped case-insensitively, ``unsafe``, ``harmful``,
  ``hateful``, ``yes``, ``true``, ``1`` to 1 and ``safe``, ``benign``,
  ``harmless``, ``not hateful``/``not_hateful``/``not-hateful``, ``no``,
  ``false``, ``0`` to 0; anything else is an error, never a guess;
- ``constant_label`` labels every row instead (an all-unsafe set, or benign
  Flickr30k images with 0);
- ``filter`` names a boolean column: only its true rows are kept (UnsafeBench's
  interaction-unsafe subset, ``mm_unsafe``).

An example's id is its row index in the split, before filtering, so that ids
stay those of the data set whatever the filter and the limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from .safety import SafetyExample

__all__ = ["LABEL_NAMES", "load_hf_disk"]

LABEL_NAMES = {
    **dict.fromkeys(("unsafe", "harmful", "hateful", "yes", "true", "1"), 1),
    **dict.fromkeys(("safe", "benign", "harmless", "not hateful", "not_hateful", "not-hateful",
                     "no", "false", "0"), 0),
}


def load_hf_disk(path: str | os.PathLike, *, split: str | None = None, text: str = "text",
                 image: str | None = "image", label: str | None = "label",
                 filter: str | None = None, constant_label: int | None = None,
                 limit: int | None = None) -> list[SafetyExample]:
    """Guard examples from a Hugging Face data set saved with ``save_to_disk``.

    Parameters
    ----------
    path : str or path-like
        The folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.
    split : str, optional
        The split of a ``DatasetDict`` (required there; it must be None for a ``Dataset``).
    text : str
        Column of the user's text (a string, or a list of strings: the first is used).
    image : str or None
        Column of the image (``Image()`` feature or a path); None for a text-only set.
    label : str or None
        Column of the label (see the module docstring); ignored when ``constant_label`` is given.
    filter : str, optional
        A boolean column: only rows where it is true are kept.
    constant_label : {0, 1}, optional
        The label of every row (1 = unsafe), for a set without a label column.
    limit : int, optional
        Read only the first ``limit`` kept rows (images are decoded only for those).

    Returns
    -------
    list of SafetyExample
        ``image_path`` holds a path column's file, ``image`` an ``Image()`` column's picture.

    Raises
    ------
    ValueError
        A missing folder, split or column (the message lists those present), a filter
        column that is not boolean, or a label that is not 0/1 or a known name.
    """
    if constant_label is not None and (isinstance(constant_label, bool)
                                       or constant_label not in (0, 1)):
        raise ValueError(f"constant_label: expected 0 or 1, got {constant_label!r}")
    if constant_label is None and label is None:
        raise ValueError("label: give a label column or a constant_label (0 or 1)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected an integer >= 1, got {limit!r}")
    root = Path(path).expanduser()
    dataset = _open(root, split)
    label = None if constant_label is not None else label
    wanted = [c for c in (text, image, label, filter) if c is not None]
    for role, column in (("text", text), ("image", image), ("label", label), ("filter", filter)):
        if column is not None and column not in dataset.column_names:
            raise ValueError(f"{role} column {column!r} not in {root}"
                             f"{'' if split is None else f' (split {split!r})'}; its columns: "
                             f"{', '.join(dataset.column_names)}")
    rows = range(dataset.num_rows)
    if filter is not None:
        keep = list(dataset[filter])
        if not all(isinstance(v, bool) for v in keep):
            bad = next(v for v in keep if not isinstance(v, bool))
            raise ValueError(f"filter column {filter!r}: expected booleans "
                             f"({dataset.features[filter]}), got {bad!r}")
        rows = [i for i, kept in enumerate(keep) if kept]
    rows = rows[:limit]
    names = _class_names(dataset.features.get(label)) if label is not None else None
    view = dataset.select_columns(list(dict.fromkeys(wanted)))
    examples = []
    for i in rows:
        row = view[i]
        picture, image_path = _image(row[image], root, image, i) if image is not None else \
            (None, None)
        y = constant_label if label is None else _label(row[label], names, label, i)
        examples.append(SafetyExample(str(i), _text(row[text], text, i), image_path, y,
                                      image=picture))
    return examples


def _open(root: Path, split: str | None):
    try:
        import datasets
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("reading a Hugging Face data set needs the datasets package: "
                                  "pip install 'hybridcert[datasets]'") from err

    if not root.is_dir():
        raise ValueError(f"Hugging Face data set: {root} is not a folder (expected the folder "
                         "written by save_to_disk)")
    try:
        loaded = datasets.load_from_disk(str(root))
    except FileNotFoundError as err:
        raise ValueError(f"Hugging Face data set: {root} holds no Dataset or DatasetDict saved "
                         f"with save_to_disk ({err})") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise ValueError(f"split: {root} holds a DatasetDict; expected one of its splits "
                             f"{', '.join(loaded)}, got {split!r}")
        return loaded[split]
    if split is not None:
        raise ValueError(f"split: {root} holds a single Dataset (no splits); expected none, "
                         f"got {split!r}")
    return loaded


def _class_names(feature) -> list[str] | None:
    import datasets

    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _text(value, column: str, row: int) -> str:
    if isinstance(value, (list, tuple)) and value:  # several captions: the first
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"text column {column!r}, row {row}: expected a non-empty string, "
                         f"got {value!r}")
    return value


def _image(value, root: Path, column: str, row: int):
    """``(picture, path)``: a decoded picture, or the path of an image file."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value, None
    if isinstance(value, dict) and value.get("bytes"):  # an Image(decode=False) column
        import io

        return Image.open(io.BytesIO(value["bytes"])), None
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, str) and value:
        path = root / Path(value).expanduser()  # an absolute path stays itself
        if not path.is_file():
            raise ValueError(f"image column {column!r}, row {row}: image {path} not found")
        return None, path
    raise ValueError(f"image column {column!r}, row {row}: expected an Image() value or a path, "
                     f"got {type(value).__name__}")


def _label(value, names: list[str] | None, column: str, row: int) -> int:
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        value = names[value]  # a ClassLabel: its name says which is unsafe, not its index
    if isinstance(value, str):
        mapped = LABEL_NAMES.get(value.strip().lower())
        if mapped is None:
            raise ValueError(f"label column {column!r}, row {row}: unknown label name {value!r}; "
                             f"expected 0/1, a boolean, or one of {', '.join(LABEL_NAMES)}")
        return mapped
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return int(value)
    raise ValueError(f"label column {column!r}, row {row}: expected 0 or 1 (1 = unsafe), a "
                     f"boolean or a label name, got {value!r}")
