"""Discrete-only certificate: the Neyman-Pearson fractional knapsack (docs/theory.md §3)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_probability
from ._numerics import (
    EPS,
    Prepared,
    broadcast,
    chunk_rows,
    complement_down,
    complement_up,
    lower,
    output,
    prepare,
    rowdot,
    upper,
)
from .atoms import Atoms

__all__ = ["discrete_bound", "discrete_bound_upper"]


def discrete_bound(p_lower: ArrayLike, atoms: Atoms) -> float | np.ndarray:
    """Smallest smoothed probability at ``x'`` given ``p_A(x) >= p_lower`` (discrete noise only).

    The worst-case base classifier spends its clean mass on the atoms of
    lowest likelihood ratio first (the last one fractionally); the
    adversarial mass it collects is the bound. Budget ``d`` is certified at
    level ``tau`` iff the bound is ``>= tau``.

    Parameters
    ----------
    p_lower : array_like, values in [0, 1]
        Lower confidence bound on ``p_A(x)``.
    atoms : Atoms
        The discrete experiment (for instance ``uniform_atoms(d, ...)``).

    Returns
    -------
    float or ndarray
        A lower bound on the exact knapsack value, never above it, and within a
        few 1e-11 relative of it (both the direct fill and the complementary
        fill from the top are evaluated, so ``p_lower`` near 1 stays exact).
    """
    p = check_probability("p_lower", p_lower)
    shape, (p,) = broadcast(p)
    v_lo, _ = knapsack_bounds(prepare(atoms), p, complement_up(p))
    return output(v_lo, shape)


def discrete_bound_upper(p_upper: ArrayLike, atoms: Atoms) -> float | np.ndarray:
    """Largest smoothed probability at ``x'`` given ``p_B(x) <= p_upper`` (docs/theory.md §8).

    The mirrored knapsack, filled from the highest ratio down; equal to
    ``1 - discrete_bound(1 - p_upper)``, computed without cancellation.
    Returns an upper bound on the exact value, never below it.
    """
    p = check_probability("p_upper", p_upper)
    shape, (p,) = broadcast(p)
    _, w_hi = knapsack_bounds(prepare(atoms), complement_down(p), p)
    return output(np.minimum(w_hi, 1.0), shape)


def knapsack_bounds(prep: Prepared, m_lo: np.ndarray,
                    mc_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigorous bounds on the knapsack value ``V(m)`` and on ``1 - V(m)``.

    ``m_lo <= m`` and ``mc_hi >= 1 - m`` bound the clean mass ``m`` the
    worst-case region must hold. Returns ``(v_lo, w_hi)`` with
    ``v_lo <= V(m)`` and ``w_hi >= 1 - V(m)`` for the exact atoms
    (see ``_numerics`` for the error model).
    """
    v_lo = np.empty(m_lo.size)
    w_hi = np.empty(m_lo.size)
    p, q, k = prep.p_all, prep.q_all, prep.n_atoms
    sum_err = 2 * (k + 2) * EPS
    before = np.concatenate([[0.0], np.cumsum(p)[:-1]]) * (1 + sum_err)       # >= exact
    after = np.concatenate([np.cumsum(p[::-1])[::-1][1:], [0.0]]) * (1 - sum_err)  # <= exact
    positive = p > 0
    safe_p = np.where(positive, p, 1.0)
    for sl in chunk_rows(m_lo.size, k):
        # Target clean mass of the approximate problem, relaxed for atom error.
        m = lower((m_lo[sl] - prep.abs_slack) / prep.rel_up)
        mc = upper(mc_hi[sl] / prep.rel_down)
        frac = lower((m[:, None] - before) / safe_p)
        frac = np.where(positive, np.clip(frac, 0.0, 1.0), 0.0)
        direct = lower(rowdot(frac, q)) * prep.rel_down
        frac_c = upper((mc[:, None] - after) / safe_p)
        frac_c = np.where(positive, np.clip(frac_c, 0.0, 1.0), 1.0)  # ratio-inf atoms lie outside
        comp = upper(rowdot(frac_c, q)) * prep.rel_up + prep.abs_slack
        # Mixed: the same bottom fill, its boundary located from the tail sums and 1 - m, which
        # keeps relative accuracy when p is near 1 and V is tiny (no cancellation against 1).
        frac_m = lower(lower(after + p - mc[:, None]) / safe_p)
        frac_m = np.where(positive, np.clip(frac_m, 0.0, 1.0), 0.0)
        mixed = lower(rowdot(frac_m, q)) * prep.rel_down
        direct = np.maximum(direct, mixed)
        v_lo[sl] = np.clip(np.maximum(direct, lower(1.0 - comp)), 0.0, 1.0)
        w_hi[sl] = np.minimum(comp, upper(1.0 - direct))
    return v_lo, w_hi
