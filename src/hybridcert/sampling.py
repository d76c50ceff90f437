"""The engine's one sampling loop: classify noisy samples batch by batch, count labels.

:func:`count_labels` is shared by :class:`~hybridcert.smoothing.SmoothedClassifier`
and the ablation baseline (:mod:`hybridcert.baselines`). ``ABSTAIN`` (-1) is
the label of a sample the model could not classify; abstentions are never
skipped: they count against the certified label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .noise import as_numpy

__all__ = ["ABSTAIN", "LabelCounts", "check_labels", "count_labels"]

logger = logging.getLogger(__name__)

ABSTAIN = -1


@dataclass(frozen=True)
class LabelCounts:
    """What :func:`count_labels` saw: per-label counts, abstentions, errors, the first error."""

    counts: np.ndarray
    abstentions: int
    errors: int
    first_error: str | None


def count_labels(base_classifier: Callable, draw: Callable, size: int, *, batch_size: int,
                 num_classes: int) -> LabelCounts:
    """Classify ``size`` noisy samples, ``draw(b) -> (tokens, continuous)`` at a time.

    The one sampling loop of the engine and the ablation baseline. Labels are
    checked by :func:`check_labels`. A sample on which the model raises is an
    abstention (counted in ``errors``, the first error logged once). A batch
    that raises is split in halves until the samples that raise on their own
    are found: a label must not depend on the rest of its batch (one attacked
    token that crashes the model would otherwise take its batch-mates along).
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    abstained = 0
    raised: list[str] = []
    for start in range(0, size, batch_size):
        b = min(batch_size, size - start)
        tok_b, cont_b = draw(b)
        labels = _labels_per_sample(base_classifier, tok_b, cont_b, b, num_classes, raised)
        valid = labels >= 0
        counts += np.bincount(labels[valid], minlength=num_classes)
        abstained += int((~valid).sum())
    return LabelCounts(counts, abstained, len(raised), raised[0] if raised else None)


def _labels_per_sample(base_classifier, tokens, cont, b: int, num_classes: int,
                       raised: list[str]) -> np.ndarray:
    """The model's labels for a batch, bisecting on exceptions down to single samples."""
    try:
        labels = base_classifier(tokens, cont)
    except Exception as err:  # any failure of the user's model is an abstention
        if b == 1:
            if not raised:
                logger.warning("the base classifier raised (counted as an abstention): %s: %s",
                               type(err).__name__, err)
            raised.append(f"{type(err).__name__}: {err}")
            return np.full(1, ABSTAIN, dtype=np.int64)
        half = b // 2
        return np.concatenate([
            _labels_per_sample(base_classifier, _rows(tokens, 0, half), _rows(cont, 0, half),
                               half, num_classes, raised),
            _labels_per_sample(base_classifier, _rows(tokens, half, b), _rows(cont, half, b),
                               b - half, num_classes, raised)])
    return check_labels(labels, b, num_classes)


def _rows(batch, start: int, stop: int):
    return None if batch is None else batch[start:stop]


def check_labels(labels, b: int, num_classes: int) -> np.ndarray:
    """``b`` integer labels in ``[-1, num_classes)`` as int64, or a ValueError saying what is wrong.

    Probabilities, scores or a short array are refused, never truncated into labels.
    """
    out = as_numpy(labels)
    if out.shape != (b,):
        raise ValueError(f"the base classifier returned labels of shape {out.shape} for a "
                         f"batch of {b}; it must return one integer label per sample")
    if out.dtype == bool or not np.issubdtype(out.dtype, np.number):
        raise ValueError(f"the base classifier must return integer labels, got {out.dtype}")
    if not np.issubdtype(out.dtype, np.integer):
        if not (np.issubdtype(out.dtype, np.floating) and np.all(out == np.round(out))):
            raise ValueError(f"the base classifier must return integer labels, got {out.dtype} "
                             "with non-integral values (probabilities? return labels)")
        out = out.astype(np.int64)
    if ((out < ABSTAIN) | (out >= num_classes)).any():
        raise ValueError(f"the base classifier returned a label outside [-1, "
                         f"{num_classes - 1}] (num_classes={num_classes})")
    return out.astype(np.int64, copy=False)
