"""Builders shipped to Ray workers by the tests (importable there through PYTHONPATH)."""

import os

import numpy as np


def killing_builder(builder, flag: str):
    """The run's smoothed classifier, whose model kills its process once (when ``flag`` is new)."""
    smoothed = builder()
    inner = smoothed.base_classifier

    def model(tokens, images):
        if not os.path.exists(flag):
            with open(flag, "w"):
                pass
            os._exit(1)  # the worker dies in the middle of an example
        return inner(tokens, images)

    smoothed.base_classifier = model
    return smoothed


def failing_builder(builder, poison: list):
    """The run's smoothed classifier, whose certify raises on the example with tokens ``poison``."""
    smoothed = builder()
    certify = smoothed.certify

    def broken(x_discrete, x_continuous, *args, **kwargs):
        if np.array_equal(np.asarray(x_discrete), np.asarray(poison)):
            raise RuntimeError("adapter failure on this input")
        return certify(x_discrete, x_continuous, *args, **kwargs)

    smoothed.certify = broken
    return smoothed
