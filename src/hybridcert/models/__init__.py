"""Model adapters: turn a user's model into a base classifier ``f(tokens, continuous) -> labels``.

Adapters sit at the edge: they know numpy, scikit-learn or torch, and nothing
of the command line. torch and scikit-learn are imported only when used.
"""

from .adapters import SklearnClassifier, TorchClassifier

__all__ = ["SklearnClassifier", "TorchClassifier"]
