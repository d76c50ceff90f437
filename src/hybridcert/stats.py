"""Confidence bounds for Monte Carlo estimates of smoothed probabilities (docs/theory.md §7).

One-sided Clopper-Pearson bounds, and the union-bound split that keeps a joint
guarantee when a certificate rests on several estimates. Counts are kept by
the engine, so any certificate can be recomputed at another ``alpha`` or
``tau`` without new model calls.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betainccinv, betaincinv

from ._validation import as_count_array, check_int

__all__ = ["clopper_pearson_lower", "clopper_pearson_upper", "split_alpha"]

# scipy's incomplete-beta inverse is accurate to ~1e-15 relative; bounds are widened by this
# much so that a rounding error never turns into a tighter claim than the data supports.
# scipy.special, not scipy.stats: the same Boost inverses (Beta.ppf and Beta.isf call them), and
# importing scipy.stats costs a command-line run about a second.
_WIDEN = 1e-12


def clopper_pearson_lower(successes, n, alpha):
    """One-sided lower confidence bound on a binomial proportion.

    ``P[p >= bound] >= 1 - alpha`` for every true ``p``:
    ``Beta.ppf(alpha, k, n - k + 1)``, and 0 when ``k = 0``.

    Parameters
    ----------
    successes : array_like of int, in [0, n]
    n : array_like of int, >= 1
    alpha : float in (0, 1)

    Returns
    -------
    float or ndarray
        The bound, widened by ``1e-12`` relative towards 0.
    """
    k, n, alpha = _check(successes, n, alpha)
    with np.errstate(invalid="ignore"):
        bound = betaincinv(k, n - k + 1, alpha)
    bound = np.where(k == 0, 0.0, bound * (1 - _WIDEN))
    return _out(np.clip(bound, 0.0, 1.0))


def clopper_pearson_upper(successes, n, alpha):
    """One-sided upper confidence bound: ``Beta.ppf(1 - alpha, k + 1, n - k)``, 1 when ``k = n``."""
    k, n, alpha = _check(successes, n, alpha)
    with np.errstate(invalid="ignore"):
        bound = betainccinv(k + 1, n - k, alpha)
    bound = np.where(k == n, 1.0, bound * (1 + _WIDEN) + 1e-300)
    return _out(np.clip(bound, 0.0, 1.0))


def split_alpha(alpha: float, estimates: int) -> float:
    """Per-estimate level for a joint guarantee at ``alpha`` over ``estimates`` bounds (Bonferroni)."""
    alpha = _check_alpha(alpha)
    return alpha / check_int("estimates", estimates, minimum=1)


def _check(successes, n, alpha):
    k = as_count_array("successes", successes, minimum=0)
    n = as_count_array("n", n, minimum=1)
    if (k > n).any():
        raise ValueError("successes must be an integer in [0, n]")
    return k, n, _check_alpha(alpha)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, (bool, str, bytes)):
        raise ValueError(f"alpha must lie in the open interval (0, 1), got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in the open interval (0, 1), got {alpha!r}")
    return alpha


def _out(x: np.ndarray):
    return float(x) if x.ndim == 0 else x
