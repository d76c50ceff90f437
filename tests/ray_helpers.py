"""Builders shipped to Ray workers by the tests (importable there through PYTHONPATH)."""

import os

import numpy as np

from hybridcert.cli import _rebuild_smoothed


def killing_builder(arg_dict: dict, flag: str):
    """The CLI's smoothed classifier, whose model kills its process once (when ``flag`` is new)."""
    smoothed = _rebuild_smoothed(arg_dict)
    inner = smoothed.base_classifier

    def model(tokens, images):
        if not os.path.exists(flag):
            with open(flag, "w"):
                pass
            os._exit(1)  # the worker dies in the middle of an example
        return inner(tokens, images)

    smoothed.base_classifier = model
    return smoothed


def failing_builder(arg_dict: dict, poison: list):
    """The CLI's smoothed classifier, whose certify raises on the example with tokens ``poison``."""
    smoothed = _rebuild_smoothed(arg_dict)
    certify = smoothed.certify

    def broken(x_discrete, x_continuous, **kwargs):
        if np.array_equal(np.asarray(x_discrete), np.asarray(poison)):
            raise RuntimeError("adapter failure on this input")
        return certify(x_discrete, x_continuous, **kwargs)

    smoothed.certify = broken
    return smoothed
