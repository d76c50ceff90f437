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
        from a noisy batch. Default: one float numpy array whose columns are
        the categorical codes (``0..arity-1``, in the data set's field order)
        followed by the numeric columns, ``np.hstack([tokens, continuous])``,
        which is what :func:`hybridcert.models.demo.tabular_pipeline` expects.
        An estimator fitted on a pandas DataFrame with column names (for
        instance a ``ColumnTransformer`` selecting columns by name) cannot read
        that array: fit it on numpy arrays in this layout, or pass
        ``features``. Such an estimator fails with an error that says so.
    classes : sequence, optional
        The label names, in label order, when the estimator predicts names
        (for instance ``"<=50K"``, ``">50K"``) instead of ``0..num_classes-1``.
        A prediction that is none of them is an abstention (-1).
    """

    def __init__(self, estimator, features: Callable | None = None, classes=None):
        if not hasattr(estimator, "predict"):
            raise ValueError("estimator must be a fitted scikit-learn classifier (has predict)")
        self.estimator = estimator
        self.features = features
        if isinstance(classes, (str, bytes)):
            raise ValueError("classes must be a sequence of label names, not one string")
        self.classes = None if classes is None else {str(c).strip(): k
                                                     for k, c in enumerate(classes)}
        if classes is not None and len(self.classes) != len(classes):
            raise ValueError(f"classes must be distinct label names, got {list(classes)!r}")

    @classmethod
    def for_table(cls, estimator, data) -> SklearnClassifier:
        """Wrap ``estimator`` for a table ``data``, in whichever form it was trained.

        An estimator fitted on a DataFrame with the file's column names
        (``feature_names_in_``) gets the rows as
        :func:`hybridcert.datasets.tabular.raw_table` builds them (category
        strings, numbers in their own units); one fitted on plain arrays gets
        the codes and standardised numbers. Label names among its ``classes_``
        are mapped to label indices through ``data.class_names``.
        """
        import functools

        from ..datasets.tabular import raw_table

        names = getattr(estimator, "feature_names_in_", None)
        features = None
        if names is not None:
            missing = sorted(set(data.feature_names) - {str(n) for n in names})
            if missing:
                raise ValueError(f"the estimator was fitted on columns {list(names)}, which lack "
                                 f"{missing} of data set {data.name!r}")
            features = functools.partial(raw_table, data)
        labels = np.asarray(getattr(estimator, "classes_", np.arange(data.num_classes)))
        named = labels.dtype.kind not in "iuf"
        if named:
            unknown = sorted({str(c).strip() for c in labels} - set(data.class_names))
            if unknown:
                raise ValueError(f"the estimator predicts {unknown}, which are not label names of "
                                 f"data set {data.name!r} ({data.class_names})")
        elif not np.isin(labels, np.arange(data.num_classes)).all():
            raise ValueError(f"the estimator's classes_ {labels.tolist()} must be the label indices "
                             f"0..{data.num_classes - 1} (or the names {data.class_names})")
        return cls(estimator, features=features, classes=data.class_names if named else None)

    def __call__(self, tokens, continuous):
        if self.features is not None:
            X = self.features(tokens, continuous)
        else:
            parts = [as_numpy(p).reshape(len(p), -1).astype(np.float64)
                     for p in (tokens, continuous) if p is not None]
            X = np.hstack(parts)
        try:
            labels = np.asarray(self.estimator.predict(X))
        except Exception as err:
            names = getattr(self.estimator, "feature_names_in_", None)
            if names is None or self.features is not None:
                raise
            raise ValueError(
                f"the scikit-learn estimator was fitted on a table with column names "
                f"({', '.join(map(str, names))}) but receives a numpy array of {X.shape[1]} "
                "columns: the categorical codes, then the numeric fields, in the data set's "
                "order. Fit it on numpy arrays in that layout (see README, 'Your own "
                f"scikit-learn model'), or pass features=. ({type(err).__name__}: {err})"
            ) from err
        if self.classes is not None:
            return np.array([self.classes.get(str(y).strip(), -1) for y in labels], dtype=np.int64)
        return labels.astype(np.int64)


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

        self.module.eval()  # per-sample labels: no batch statistics (see hybridcert.smoothing)
        with torch.no_grad():
            tok = None if tokens is None else torch.as_tensor(tokens, device=self.device)
            cont = None if continuous is None else torch.as_tensor(
                continuous, device=self.device, dtype=self.dtype)
            logits = self.module(tok, cont)
            return logits.argmax(dim=-1).cpu().numpy()
