"""The settings of a run: one typed record, written to ``run.json`` in one place.

``hybridcert certify`` (:meth:`hybridcert.run.Plan.settings`) and
:func:`hybridcert.runner.certify_dataset` both build a :class:`RunSettings`
and write :meth:`RunSettings.to_json`, so the same configuration gives the
same ``run.json`` from either, apart from the identity of the data and the
model and the provenance (the hybridcert version). The smoothed classifier's
part is :meth:`~hybridcert.smoothing.SmoothedClassifier.settings_for`, the
dict every certificate records (kernel, threat and Gaussian noise as their
structured ``describe()``); the estimation part is the
:class:`~hybridcert.spec.EstimationSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._validation import json_safe
from ._version import __version__
from .spec import EstimationSpec
from .streams import STREAM_VERSION

__all__ = ["RunSettings"]

# Entries of a certificate's settings that each example fills in: not settings of the run.
PER_EXAMPLE = ("counted_label", "level", "attack", "stream", "base_classifier")


@dataclass(frozen=True)
class RunSettings:
    """Every setting that changes a result, and the run's identity.

    Parameters
    ----------
    dataset : str
        The data set's name.
    model : str
        The model's name (``demo``, ``sklearn:PATH``, ``hf:NAME``, a callable's
        qualified name).
    classifier : dict
        The smoothed classifier's settings
        (:meth:`~hybridcert.smoothing.SmoothedClassifier.settings_for`).
    estimation : EstimationSpec
    data : dict, optional
        The data's identity: its source, folder and the options it was read
        with (and a hash of its examples, ``data["sha256"]``, where known).
    model_fingerprint : dict, optional
        The model's identity beyond its name (a pickle's hash, an HF model's
        revision and config hash, ...), where known.
    guard : dict, optional
        An hf: guard's own description.
    image_size : int, optional
        The image size an hf: guard reads.
    limit : int, optional
        Examples certified at most (not compared on resume).
    """

    dataset: str
    model: str
    classifier: dict
    estimation: EstimationSpec
    data: dict | None = None
    model_fingerprint: dict | None = None
    guard: dict | None = None
    image_size: int | None = None
    limit: int | None = None

    @classmethod
    def of(cls, smoothed, spec: EstimationSpec, **identity) -> RunSettings:
        """The record of a run of ``smoothed`` under ``spec`` (``identity``: the other fields)."""
        return cls(classifier=smoothed.settings_for(spec), estimation=spec, **identity)

    def to_json(self) -> dict:
        """The content of ``run.json``: flat, plain JSON types (checked: a ValueError names
        an entry JSON cannot hold, before anything is written)."""
        classifier = {k: v for k, v in self.classifier.items() if k not in PER_EXAMPLE}
        record = {
            "dataset": self.dataset, "data": self.data, "model": self.model,
            "model_fingerprint": self.model_fingerprint, "guard": self.guard,
            "image_size": self.image_size, **classifier, **self.estimation.to_dict(),
            "stream": STREAM_VERSION, "limit": self.limit, "hybridcert": __version__,
        }
        return json_safe(record, "settings")
