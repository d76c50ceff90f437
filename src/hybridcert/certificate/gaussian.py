"""Gaussian-only certificate (Cohen et al. 2019; docs/theory.md §4)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_open_unit, check_positive, check_probability
from ._numerics import EPS, NDTRI_RTOL, broadcast, output, probit, round_down

__all__ = ["gaussian_radius"]


def gaussian_radius(p_lower: ArrayLike, *, sigma: ArrayLike,
                    tau: ArrayLike = 0.5) -> float | np.ndarray:
    """Certified L2 radius of Gaussian smoothing: ``sigma * (Phi^-1(p_lower) - Phi^-1(tau))``.

    Parameters
    ----------
    p_lower : array_like, values in [0, 1]
        Lower confidence bound on ``p_A(x)``.
    sigma : array_like, > 0
        Standard deviation of the Gaussian noise.
    tau : array_like, values in (0, 1)
        Decision threshold (1/2 for the binary majority rule).

    Returns
    -------
    float or ndarray
        The radius, rounded down past every floating-point error of the
        formula (a few ulps), so it never exceeds the exact one; ``0.0`` where
        ``p_lower <= tau``; ``inf`` where ``p_lower == 1``.

    References
    ----------
    Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized
    Smoothing", ICML 2019, Theorem 1.

    Examples
    --------
    >>> round(gaussian_radius(0.999, sigma=0.5), 6)
    1.545116
    >>> gaussian_radius([0.4, 1.0], sigma=0.5)
    array([ 0., inf])
    """
    p = check_probability("p_lower", p_lower)
    s = check_positive("sigma", sigma)
    t = check_open_unit("tau", tau)
    shape, (p, s, t) = broadcast(p, s, t)
    return output(round_down(s * cohen_scaled_radius(p, t)), shape)


def cohen_scaled_radius(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``Phi^-1(p) - Phi^-1(t)`` rounded down to a sound value; 0 if not positive, inf at p = 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a_p = probit(p, 1.0 - p)  # 1 - p is exact where probit uses it (p > 1/2)
        a_t = probit(t, 1.0 - t)
        a = a_p - a_t
        a = a - NDTRI_RTOL * 1.01 * (np.abs(a_p) + np.abs(a_t)) - 2 * EPS * np.abs(a)
    a = np.where(p >= 1.0, np.inf, a)
    return np.where((p <= t) | ~(a > 0), 0.0, a)
