"""Loaders for multimodal safety data sets users keep on disk (nothing is downloaded).

- Hateful Memes (Kiela et al. 2020): ``ROOT/{train,dev_seen,dev_unseen,test_seen,...}.jsonl``,
  one object a line with ``id``, ``img`` (a path relative to ROOT, such as
  ``img/42953.png``), ``text`` and ``label`` (1 = hateful).
- MM-SafetyBench (Liu et al. 2024), raw layout:
  ``ROOT/data/processed_questions/<scenario>.json``, a dict from question id
  to fields such as ``"Rephrased Question"``, ``"Rephrased Question(SD)"`` and
  ``"Key Phrase"``; images at ``ROOT/data/imgs/<scenario>/<SD|SD_TYPO|TYPO>/<id>.jpg``.
  Every example is unsafe (label 1). ``text_field`` chooses the question
  field (default: ``"Rephrased Question(SD)"`` for SD images, else
  ``"Rephrased Question"``, and ``"Question"`` where that is empty).
- Hugging Face data sets saved with ``save_to_disk``: see :mod:`hybridcert.datasets.hf_disk`.

Paths come from an argument or an environment variable
(``HYBRIDCERT_HATEFUL_MEMES``, ``HYBRIDCERT_MMSAFETYBENCH``); a missing path
raises an error that says what was expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MM_SAFETYBENCH_TEXT = {"SD": "Rephrased Question(SD)", "SD_TYPO": "Rephrased Question",
                       "TYPO": "Rephrased Question"}


@dataclass(frozen=True)
class SafetyExample:
    """One raw example: the user's text, its image, and its label (1 = unsafe).

    The image is the file at ``image_path``, or ``image`` itself, a picture a
    data set holds in memory (a Hugging Face ``Image()`` column). A text-only
    example has neither.
    """

    id: str
    text: str
    image_path: Path | None
    label: int
    image: object = field(default=None, repr=False)

    @property
    def image_source(self):
        """What :func:`load_image` reads: the in-memory picture, else the path (None if neither)."""
        return self.image if self.image is not None else self.image_path


def load_hateful_memes(root: str | os.PathLike | None = None,
                       split: str = "dev_seen") -> list[SafetyExample]:
    """Hateful Memes examples of ``split`` from ``root`` (or ``$HYBRIDCERT_HATEFUL_MEMES``)."""
    root = _root(root, "HYBRIDCERT_HATEFUL_MEMES", "Hateful Memes",
                 "a folder with <split>.jsonl files and the img/ folder they refer to")
    path = root / f"{split}.jsonl"
    if not path.is_file():
        found = sorted(p.name for p in root.glob("*.jsonl"))
        raise ValueError(f"Hateful Memes split {split!r} not found: expected {path} "
                         f"(found: {', '.join(found) or 'no .jsonl file'})")
    examples = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "img", "text"} - set(row)
        if missing:
            raise ValueError(f"{path}:{line_no}: missing field(s) {sorted(missing)}")
        image = root / row["img"]
        if not image.is_file():
            raise ValueError(f"{path}:{line_no}: image {image} not found")
        examples.append(SafetyExample(str(row["id"]), row["text"], image, int(row.get("label", -1))))
    return examples


def load_mm_safetybench(root: str | os.PathLike | None = None, *, image_type: str = "SD_TYPO",
                        scenarios: list[str] | None = None,
                        text_field: str | None = None) -> list[SafetyExample]:
    """MM-SafetyBench questions with their images (all unsafe), from the raw layout.

    ``text_field`` names the question field used as the user's text (such as
    ``"Question"``, ``"Rephrased Question"`` or ``"Rephrased Question(SD)"``);
    every question must have it, non-empty. None keeps the default of the
    module docstring.
    """
    if image_type not in MM_SAFETYBENCH_TEXT:
        raise ValueError(f"image_type must be one of {sorted(MM_SAFETYBENCH_TEXT)}")
    root = _root(root, "HYBRIDCERT_MMSAFETYBENCH", "MM-SafetyBench",
                 "the raw layout data/processed_questions/<scenario>.json and "
                 "data/imgs/<scenario>/<SD|SD_TYPO|TYPO>/<id>.jpg")
    questions = root / "data" / "processed_questions"
    files = sorted(questions.glob("*.json"))
    if not files:
        raise ValueError(f"MM-SafetyBench: no scenario file in {questions} (expected "
                         "data/processed_questions/<scenario>.json)")
    wanted = {Path(f).stem for f in files} if scenarios is None else set(scenarios)
    examples = []
    for file in files:
        scenario = file.stem
        if scenario not in wanted:
            continue
        for qid, fields in json.loads(file.read_text()).items():
            if text_field is None:
                text = fields.get(MM_SAFETYBENCH_TEXT[image_type]) or fields.get("Question")
            elif isinstance(fields.get(text_field), str) and fields[text_field].strip():
                text = fields[text_field]
            else:
                raise ValueError(f"MM-SafetyBench: {file.name}, question {qid}: no text field "
                                 f"{text_field!r}; its fields: {', '.join(fields)}")
            image = root / "data" / "imgs" / scenario / image_type / f"{qid}.jpg"
            if not image.is_file():
                raise ValueError(f"MM-SafetyBench: image {image} not found")
            examples.append(SafetyExample(f"{scenario}/{qid}", text, image, 1))
    return examples


def load_image(path: str | os.PathLike | PILImage, size: int | None = None) -> np.ndarray:
    """An RGB image as float32 ``(H, W, 3)`` in ``[0, 1]``, optionally resized to ``size``.

    ``path`` is an image file, or a PIL image already in memory (which is not closed).
    """
    from PIL import Image

    if isinstance(path, Image.Image):
        img = path.convert("RGB")  # convert copies, so the caller's picture is left as it was
    else:
        with Image.open(path) as opened:
            img = opened.convert("RGB")
    if size is not None:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _root(root, env: str, name: str, expected: str) -> Path:
    root = root or os.environ.get(env)
    if not root:
        raise ValueError(f"{name}: give its folder (argument or ${env}); expected {expected}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{name}: {root} is not a folder; expected {expected}")
    return root
