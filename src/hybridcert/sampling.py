"""The engine's one sampling loop: classify noisy samples batch by batch, count labels.

:func:`count_labels` is shared by :class:`~hybridcert.smoothing.SmoothedClassifier`
and the ablation baseline (:mod:`hybridcert.baselines`). ``ABSTAIN`` (-1) is
the label of a sample the model could not classify; abstentions are never
skipped: they count against the certified label.

A sample on which the model raises is not a label. :func:`count_labels` either
raises :class:`ModelError` at once (``raise_on_error``) or gives the sample
``failed_label``; :class:`~hybridcert.smoothing.SmoothedClassifier` chooses
both from its ``on_model_error`` policy, so that a crashing model never reads
as "not flagged".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .noise import as_numpy

__all__ = ["ABSTAIN", "MAX_ERROR_RATE", "ON_MODEL_ERROR", "LabelCounts", "ModelError", "check_labels",
           "count_labels"]

# The error policies of the engine (SmoothedClassifier(on_model_error=...)), the default first,
# and the default bound on an input's share of failed samples above which the answer is an error.
ON_MODEL_ERROR = ("raise", "flag")
MAX_ERROR_RATE = 0.05

ABSTAIN = -1


@dataclass(frozen=True)
class LabelCounts:
    """What :func:`count_labels` saw: per-label counts, abstentions, errors, the first error.

    ``segments`` (when the samples were counted in segments, see ``ends``
    below): the per-label counts of each segment, shape ``(segments,
    num_classes)``, in sample order; ``counts`` is their sum.
    ``segment_errors``: the failed samples of each segment (they sum to ``errors``).
    """

    counts: np.ndarray
    abstentions: int
    errors: int
    first_error: str | None
    segments: np.ndarray | None = None
    segment_errors: np.ndarray | None = None

    @classmethod
    def of(cls, labels: np.ndarray, num_classes: int, ends=None) -> LabelCounts:
        """The counts of checked labels (:func:`check_labels`), none of them failed.

        ``ends`` (optional, increasing): segment ends, as positions relative to
        ``labels[0]``; sample ``s`` belongs to segment ``searchsorted(ends, s,
        "right")``, so ends at or below 0 name segments that ended before
        these labels (their counts are 0) and the last end must be
        ``>= labels.size``.
        """
        valid = labels >= 0
        abstentions = int(labels.size - np.count_nonzero(valid))
        if ends is None:
            return cls(np.bincount(labels[valid], minlength=num_classes), abstentions, 0, None)
        ends = np.asarray(ends, dtype=np.int64)
        if ends.ndim != 1 or ends.size == 0 or ends[-1] < labels.size:
            raise ValueError(f"ends must be 1-D, non-empty and end at or after the last label "
                             f"({labels.size}), got {ends.tolist()}")
        segment = np.searchsorted(ends, np.arange(labels.size), side="right")
        flat = np.bincount(segment[valid] * num_classes + labels[valid],
                           minlength=ends.size * num_classes)
        per_segment = flat.reshape(ends.size, num_classes)
        return cls(per_segment.sum(axis=0), abstentions, 0, None, per_segment,
                   np.zeros(ends.size, dtype=np.int64))


class ModelError(RuntimeError):
    """The base classifier raised on samples of an input: no decision is made from them.

    Attributes
    ----------
    first_error : str
        ``"TypeName: message"`` of the first sample that raised (the
        exception itself is ``__cause__`` when raised at that sample).
    errors : int
        Samples on which the model raised.
    calls : int
        Samples classified (or attempted) for the input so far.
    """

    def __init__(self, message: str, *, first_error: str, errors: int, calls: int):
        super().__init__(message)
        self.first_error, self.errors, self.calls = first_error, int(errors), int(calls)

    def __reduce__(self):   # keyword arguments survive pickling (Ray workers, processes)
        return _model_error, (str(self), self.first_error, self.errors, self.calls)


def _model_error(message: str, first_error: str, errors: int, calls: int) -> ModelError:
    return ModelError(message, first_error=first_error, errors=errors, calls=calls)


def count_labels(base_classifier: Callable, draw: Callable, size: int, *, batch_size: int,
                 num_classes: int, failed_label: int = ABSTAIN,
                 raise_on_error: bool = False, ends=None) -> LabelCounts:
    """Classify ``size`` noisy samples, ``draw(b) -> (tokens, continuous)`` at a time.

    ``ends`` (optional): also count per segment, the segments ending at these
    positions (relative to the first sample, increasing, the last ``>= size``;
    :meth:`LabelCounts.of`): a sequential rule's looks inside one request.

    The one sampling loop of the engine and the ablation baseline. Labels are
    checked by :func:`check_labels`. A batch that raises is split in halves
    until the samples that raise on their own are found: a label must not
    depend on the rest of its batch (one attacked token that crashes the model
    would otherwise take its batch-mates along; a batch too large for the
    device is served in halves). A sample that raises on its own is counted
    in ``errors`` and gets ``failed_label`` (``ABSTAIN``: against every
    label), or, with ``raise_on_error``, raises :class:`ModelError` at once.
    Nothing is logged here: the caller logs once per input, with the counts.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    abstained = 0
    raised: list[str] = []
    failed_at: list[int] = []   # positions of the samples that raised, in sample order
    done = 0

    def on_failure(err: Exception, position: int) -> int:
        raised.append(f"{type(err).__name__}: {err}")
        failed_at.append(done + position)
        if raise_on_error:
            raise ModelError(f"the base classifier raised on a sample: {raised[0]}",
                             first_error=raised[0], errors=1, calls=done + position + 1) from err
        return failed_label

    ends = None if ends is None else np.asarray(ends, dtype=np.int64)
    per_segment = None if ends is None else np.zeros((ends.size, num_classes), dtype=np.int64)
    for start in range(0, size, batch_size):
        b = min(batch_size, size - start)
        tok_b, cont_b = draw(b)
        done = start
        seen = LabelCounts.of(_labels_per_sample(base_classifier, tok_b, cont_b, b, num_classes,
                                                 on_failure), num_classes,
                              None if ends is None else ends - start)
        counts += seen.counts
        abstained += seen.abstentions
        if per_segment is not None:
            per_segment += seen.segments
    segment_errors = None if ends is None else np.bincount(
        np.searchsorted(ends, np.asarray(failed_at, dtype=np.int64), side="right"),
        minlength=ends.size)[:ends.size]
    return LabelCounts(counts, abstained, len(raised), raised[0] if raised else None, per_segment,
                       segment_errors)


def _labels_per_sample(base_classifier, tokens, cont, b: int, num_classes: int,
                       on_failure: Callable[[Exception, int], int], offset: int = 0) -> np.ndarray:
    """The model's labels for a batch, bisecting on exceptions down to single samples
    (``on_failure(err, position)``: ``position`` is the sample's, ``offset`` the batch's)."""
    try:
        labels = base_classifier(tokens, cont)
    except Exception as err:  # any failure of the user's model; on_failure says what it becomes
        if b == 1:
            return np.full(1, on_failure(err, offset), dtype=np.int64)
        half = b // 2
        return np.concatenate([
            _labels_per_sample(base_classifier, _rows(tokens, 0, half), _rows(cont, 0, half),
                               half, num_classes, on_failure, offset),
            _labels_per_sample(base_classifier, _rows(tokens, half, b), _rows(cont, half, b),
                               b - half, num_classes, on_failure, offset + half)])
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
    kind = out.dtype.kind   # dtype kinds, not np.issubdtype: this runs on every model batch
    if kind not in "iuf":
        raise ValueError(f"the base classifier must return integer labels, got {out.dtype}")
    if kind == "f":
        if not np.all(out == np.round(out)):
            raise ValueError(f"the base classifier must return integer labels, got {out.dtype} "
                             "with non-integral values (probabilities? return labels)")
        out = out.astype(np.int64)
    if ((out < ABSTAIN) | (out >= num_classes)).any():
        raise ValueError(f"the base classifier returned a label outside [-1, "
                         f"{num_classes - 1}] (num_classes={num_classes})")
    return out.astype(np.int64, copy=False)
