"""Adapters from scikit-learn estimators and torch modules to the base-classifier protocol."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..noise import as_numpy


class SklearnClassifier:
    """Wrap any fitted scikit-learn classifier as a base classifier.

    Parameters
    ----------
    estimator : fitted classifier
        Anything with ``predict``; its classes must be ``0..num_classes-1``.
    features : callable, optional
        ``features(tokens, continuous) -> X`` builds the estimator's input
        from a noisy batch. Default: the categorical codes followed by the
        numeric columns, ``np.hstack([tokens, continuous])``, which is what
        :func:`hybridcert.models.demo.tabular_pipeline` expects.
    """

    def __init__(self, estimator, features: Callable | None = None):
        if not hasattr(estimator, "predict"):
            raise ValueError("estimator must be a fitted scikit-learn classifier (has predict)")
        self.estimator = estimator
        self.features = features

    def __call__(self, tokens, continuous):
        if self.features is not None:
            X = self.features(tokens, continuous)
        else:
            parts = [as_numpy(p).reshape(len(p), -1).astype(np.float64)
                     for p in (tokens, continuous) if p is not None]
            X = np.hstack(parts)
        return np.asarray(self.estimator.predict(X)).astype(np.int64)


class TorchClassifier:
    """Wrap a torch module ``module(tokens, continuous) -> logits`` as a base classifier.

    Runs under ``torch.no_grad()`` in eval mode on ``device``; the label is the
    argmax of the logits. Inputs may be numpy arrays or tensors.
    """

    def __init__(self, module, device: str = "cpu", dtype=None):
        import torch

        self.module = module.to(device).eval()
        self.device = torch.device(device)
        self.dtype = torch.float32 if dtype is None else dtype

    def __call__(self, tokens, continuous):
        import torch

        with torch.no_grad():
            tok = None if tokens is None else torch.as_tensor(tokens, device=self.device)
            cont = None if continuous is None else torch.as_tensor(
                continuous, device=self.device, dtype=self.dtype)
            logits = self.module(tok, cont)
            return logits.argmax(dim=-1).cpu().numpy()
