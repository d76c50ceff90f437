"""Argument checks shared by the public functions.

Every check raises ``ValueError`` naming the argument and its valid range, so a
user who passes ``beta=0`` or a NaN learns at once what is wrong.
"""

from __future__ import annotations

import numbers

import numpy as np


def as_float_array(name: str, value) -> np.ndarray:
    """Convert to a float64 array; reject NaN and non-numeric input (strings, bools included)."""
    raw = np.asarray(value) if not isinstance(value, (str, bytes)) else None
    if raw is None or raw.dtype == bool or raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from err
    if np.isnan(arr).any():
        raise ValueError(f"{name} must not be NaN")
    return arr


def as_count_array(name: str, value, *, minimum: int) -> np.ndarray:
    """Whole numbers (as float64) of at least ``minimum``: no bool, string, NaN or inf."""
    raw = np.asarray(value)
    if raw.dtype == bool or raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be an integer or an array of integers >= {minimum}, "
                         f"got {value!r}")
    arr = raw.astype(float)
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < minimum)
    if bad.any():
        raise ValueError(f"{name} must be an integer >= {minimum} (finite), got {_show(arr, bad)}")
    return arr


def check_probability(name: str, value) -> np.ndarray:
    """A probability in the closed interval [0, 1]."""
    arr = as_float_array(name, value)
    if ((arr < 0) | (arr > 1)).any():
        raise ValueError(f"{name} must lie in [0, 1], got {_show(arr, (arr < 0) | (arr > 1))}")
    return arr


def check_open_unit(name: str, value) -> np.ndarray:
    """A level in the open interval (0, 1), such as ``tau``."""
    arr = as_float_array(name, value)
    bad = (arr <= 0) | (arr >= 1)
    if bad.any():
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {_show(arr, bad)}")
    return arr


def check_positive(name: str, value) -> np.ndarray:
    """A strictly positive finite number, such as ``sigma``."""
    arr = as_float_array(name, value)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise ValueError(f"{name} must be positive and finite, got {_show(arr, bad)}")
    return arr


def check_nonnegative(name: str, value) -> np.ndarray:
    """A non-negative number (``inf`` allowed), such as a radius."""
    arr = as_float_array(name, value)
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0, got {_show(arr, arr < 0)}")
    return arr


def check_beta(value) -> float:
    """The substitution (or mask) probability, in (0, 1]."""
    beta = _scalar("beta", value)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must lie in (0, 1], got {beta!r}")
    return beta


def check_int(name: str, value, *, minimum: int) -> int:
    """An integer (a float with an integral value is accepted) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        if not np.isfinite(value) or float(value) != int(value):
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        out = int(value)
    if out < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out


def check_token_id(name: str, value) -> int:
    """An integer symbol id of any sign (a mask or filler id may lie outside the vocabulary)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            (not isinstance(value, numbers.Integral) and not float(value).is_integer()):
        raise ValueError(f"{name} must be an integer token id, got {value!r}")
    return int(value)


def _scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if np.isnan(out):
        raise ValueError(f"{name} must not be NaN")
    return out


def _show(arr: np.ndarray, bad: np.ndarray) -> str:
    return repr(float(arr[bad].flat[0])) if arr.ndim else repr(float(arr))
