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


# --------------------------------------------------------------------------- declarative constraints
# scikit-learn's ``_parameter_constraints`` style: a class states, per parameter, the constraints
# of which one must hold; :func:`validate_params` checks them all and names what failed.


class ParameterError(ValueError):
    """A parameter outside its valid range; ``name``, ``expected`` and ``got`` say which and why."""

    def __init__(self, name: str, expected: str, got):
        self.name, self.expected, self.got = name, expected, got
        super().__init__(f"{name} must be {expected}, got {got!r}")


class Interval:
    """A finite number of a kind (``numbers.Integral`` or ``numbers.Real``) between bounds.

    ``closed`` is ``"left"``, ``"right"``, ``"both"`` or ``"neither"``; a bound
    of None is open-ended. Bools are never numbers here, and NaN and infinities
    never lie in an interval.
    """

    def __init__(self, kind: type, left: float | None, right: float | None, *,
                 closed: str = "both"):
        if kind not in (numbers.Integral, numbers.Real):
            raise ValueError(f"kind must be numbers.Integral or numbers.Real, got {kind!r}")
        if closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"closed must be left, right, both or neither, got {closed!r}")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        if not np.isfinite(float(value)):
            return False
        if self.left is not None and (value < self.left or (
                value == self.left and self.closed not in ("left", "both"))):
            return False
        return self.right is None or value < self.right or (
            value == self.right and self.closed in ("right", "both"))

    def __str__(self) -> str:
        what = "an integer" if self.kind is numbers.Integral else "a number"
        lo = None if self.left is None else ("<=" if self.closed in ("left", "both") else "<")
        hi = None if self.right is None else ("<=" if self.closed in ("right", "both") else "<")
        if lo and hi:
            if self.closed == "neither":
                return f"{what} in the open interval ({self.left}, {self.right})"
            if self.closed == "both":
                return f"{what} in [{self.left}, {self.right}]"
            return f"{what} with {self.left} {lo} x {hi} {self.right}"
        if lo:
            return f"{what} {'>=' if lo == '<=' else '>'} {self.left}"
        if hi:
            return f"{what} {hi} {self.right}"
        return f"a finite {'integer' if self.kind is numbers.Integral else 'number'}"


class Options:
    """One of a fixed set of values (compared with ``==``; bools only match bools)."""

    def __init__(self, options):
        self.options = tuple(options)

    def is_satisfied_by(self, value) -> bool:
        return any(isinstance(value, str) == isinstance(o, str) and
                   isinstance(value, bool) == isinstance(o, bool) and value == o
                   for o in self.options)

    def __str__(self) -> str:
        return "one of " + ", ".join(str(o) for o in self.options)


def validate_params(params: dict, constraints: dict) -> None:
    """Check each of ``params`` against its constraints; raise :class:`ParameterError`.

    ``constraints`` maps a name to a list of constraint objects (:class:`Interval`,
    :class:`Options`, a type) or ``None`` (the value None is allowed), of which one
    must hold.
    """
    for name, allowed in constraints.items():
        value = params[name]
        if any((c is None and value is None) or
               (isinstance(c, type) and isinstance(value, c)) or
               (hasattr(c, "is_satisfied_by") and c.is_satisfied_by(value)) for c in allowed):
            continue
        words = [str(c) for c in allowed if c is not None and not isinstance(c, type)]
        words += [f"a {c.__name__}" for c in allowed if isinstance(c, type)]
        if None in allowed:
            words.append("None")
        raise ParameterError(name, " or ".join(words), value)


def json_safe(value, where: str = "value"):
    """``value`` in plain JSON types (numpy scalars and arrays converted, tuples as lists).

    Raises ``ValueError`` naming the offending entry for anything JSON cannot
    hold (an object, a non-string key), so that a record
    is refused before anything is written rather than crashing half-written.
    """
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value   # Python's json writes and reads back NaN and infinities
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a key {key!r} that is not a string; JSON needs "
                                 "string keys")
            out[key] = json_safe(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{where} is a {type(value).__name__} ({value!r}), which JSON cannot hold; "
                     "record plain numbers, strings, lists and dicts")
