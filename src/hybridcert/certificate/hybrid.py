"""Hybrid certificate: discrete atoms and Gaussian noise at once (docs/theory.md §5, §6, §8).

For ``d`` discrete changes with atoms ``(p_k, q_k, gamma_k)`` and a continuous
shift of norm ``r``, write ``a = r / sigma`` and
``z_k(lam) = (lam - log gamma_k) / a + a / 2``. The worst-case region is
``{joint ratio <= e^lam}``, with clean and adversarial mass

    F(lam) = sum_k p_k Phi(z_k),        V(lam) = sum_k q_k Phi(z_k - a).

``V(a)`` is ``V(lam*)`` where ``F(lam*) = p_lower``; the certified radius is
``sigma * sup {a : V(a) >= tau}``.

How it is computed. A fast vectorised solver (safeguarded Newton in probit
space, nested: ``lam`` for a given ``a``, then ``a``) finds an approximate
radius; along the constraint ``dV/da = -sum_k q_k phi(z_k - a)``, so both
levels converge in a few steps. The answer is then *proved*: at a slightly
smaller ``a`` we find ``lam_lo`` whose clean mass is provably below the target
(so ``lam_lo <= lam*``) and bound ``V(lam_lo)`` from below with every rounding
error of the evaluation (``_numerics``) on the safe side. Only proved values
are returned; a value the fast path cannot prove falls back to bisection on
the proved predicate. The bound ``V`` uses both ``sum q Phi(z - a)`` and
``1 - sum q Phi(a - z)`` so that probabilities near 0 and near 1 keep full
relative accuracy.

Monotonicity in ``r`` (used to call ``sup`` a radius): for ``r < r'`` the
channel ``u -> (r/r') u + sqrt(1 - (r/r')^2) w`` maps ``N(0, 1)`` to itself
and ``N(r', 1)`` to ``N(r, 1)``, so the pair at ``r`` is a garbling of the pair
at ``r'`` and its Neyman-Pearson value is at least as large: ``V(r) >= V(r')``.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr

from .._validation import (
    check_nonnegative,
    check_open_unit,
    check_positive,
    check_probability,
)
from ._numerics import (
    EPS,
    SQRT_2PI,
    Prepared,
    broadcast,
    chunk_rows,
    complement_down,
    complement_up,
    lower,
    output,
    phi_lower,
    phi_upper,
    prepare,
    probit,
    round_down,
    round_up,
    rowdot,
    total_variation_upper,
    upper,
)
from .atoms import Atoms
from .discrete import knapsack_bounds
from .gaussian import cohen_scaled_radius

__all__ = [
    "certified_radius",
    "multiclass_radius",
    "worst_case_probability",
    "worst_case_probability_upper",
]

_MAX_NEWTON = 80
_MAX_BISECT = 64


def _quiet(fn):
    """Silence floating-point warnings: the fast solver overflows on purpose far from the root,
    and every such value is either rejected by its safeguards or re-checked by the proof."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- public API


def worst_case_probability(p_lower: ArrayLike, *, sigma: ArrayLike, atoms: Atoms,
                           radius: ArrayLike) -> float | np.ndarray:
    """``V(r)``: the smallest ``p_A(x')`` over attacks of ``d`` changes and L2 shift ``radius``.

    Parameters
    ----------
    p_lower : array_like, values in [0, 1]
        Lower confidence bound on ``p_A(x)``.
    sigma : array_like, > 0
        Gaussian noise level.
    atoms : Atoms
        Discrete atoms of the budget (``uniform_atoms(d, ...)`` etc.).
    radius : array_like, >= 0
        Norm of the continuous shift; ``0`` gives :func:`discrete_bound`.

    Returns
    -------
    float or ndarray
        A lower bound on the exact ``V(r)`` (never above it), accurate to
        about 1e-10 relative.
    """
    p = check_probability("p_lower", p_lower)
    s = check_positive("sigma", sigma)
    r = check_nonnegative("radius", radius)
    shape, (p, s, r) = broadcast(p, s, r)
    a = round_up(r / s)
    v_lo, _ = _bounds_at_radius(prepare(atoms), p, complement_up(p), a)
    return output(v_lo, shape)


def worst_case_probability_upper(p_upper: ArrayLike, *, sigma: ArrayLike, atoms: Atoms,
                                 radius: ArrayLike) -> float | np.ndarray:
    """The largest ``p_B(x')`` given ``p_B(x) <= p_upper`` (docs/theory.md §8, runner-up label).

    The mirrored problem ``max Q(R) s.t. P(R) <= p_upper`` equals
    ``1 - V(1 - p_upper)``; it is evaluated without cancellation. Returns an
    upper bound on the exact value, never below it.
    """
    p = check_probability("p_upper", p_upper)
    s = check_positive("sigma", sigma)
    r = check_nonnegative("radius", radius)
    shape, (p, s, r) = broadcast(p, s, r)
    a = round_up(r / s)
    _, w_hi = _bounds_at_radius(prepare(atoms), complement_down(p), p, a)
    return output(np.minimum(w_hi, 1.0), shape)


def certified_radius(p_lower: ArrayLike, *, sigma: ArrayLike, atoms: Atoms,
                     tau: ArrayLike = 0.5) -> float | np.ndarray:
    """``r*(d)``: the largest L2 radius at which ``p_A(x') >= tau`` still holds after ``d`` changes.

    Parameters
    ----------
    p_lower : array_like, values in [0, 1]
        Lower confidence bound on ``p_A(x)``.
    sigma : array_like, > 0
        Gaussian noise level.
    atoms : Atoms
        Discrete atoms of the budget ``d`` (one atom of ratio 1 for ``d = 0``,
        which gives Cohen's radius).
    tau : array_like, values in (0, 1)
        Decision threshold: 1/2 for the binary majority rule, the filter's
        threshold (for instance 4.6e-5) for the safety-filter rule.

    Returns
    -------
    float or ndarray
        The radius, never above the exact one and within about 1e-9 relative
        of it; ``0.0`` when the budget is not certified (``p_lower <= tau``,
        or the discrete bound alone below ``tau``); ``inf`` when
        ``p_lower == 1`` and the discrete bound is at least ``tau``.

    Examples
    --------
    Two changed tokens out of a 32000-token vocabulary, with image noise 0.5:

    >>> from hybridcert import uniform_atoms
    >>> atoms = uniform_atoms(2, beta=0.25, vocab_size=32000)
    >>> round(certified_radius(0.999, sigma=0.5, atoms=atoms, tau=4.6e-5), 4)
    2.6653
    >>> certified_radius(0.4, sigma=0.5, atoms=atoms)  # p_lower <= tau: not certified
    0.0
    """
    p = check_probability("p_lower", p_lower)
    s = check_positive("sigma", sigma)
    t = check_open_unit("tau", tau)
    shape, (p, s, t) = broadcast(p, s, t)
    prep = prepare(atoms)
    if prep.is_gaussian:
        a = cohen_scaled_radius(p, t)
    else:
        a = np.empty(p.size)
        for sl in chunk_rows(p.size, prep.n_atoms, budget=1 << 18):
            a[sl] = _threshold_radius(prep, p[sl], t[sl])
    return output(round_down(s * a), shape)


def multiclass_radius(p_lower: ArrayLike, p_upper: ArrayLike, *, sigma: ArrayLike,
                      atoms: Atoms) -> float | np.ndarray:
    """Radius at which the top label ``A`` provably beats the runner-up ``B`` (docs/theory.md §8).

    Certified at ``(d, r)`` iff the lower bound on ``p_A(x')`` exceeds the upper
    bound on ``p_B(x')``; both use the same atoms. With ``d = 0`` this is
    Cohen's ``sigma / 2 * (Phi^-1(p_lower) - Phi^-1(p_upper))``.

    Parameters
    ----------
    p_lower : array_like
        Lower confidence bound on ``p_A(x)``.
    p_upper : array_like
        Upper confidence bound on ``p_B(x)``; must satisfy
        ``p_lower + p_upper <= 1``. Values below 1e-300 are raised to 1e-300
        (sound: a larger upper bound), which keeps the radius finite.
    sigma : array_like, > 0
    atoms : Atoms

    Returns
    -------
    float or ndarray
        The radius (never above the exact one); ``0.0`` where not certified.
    """
    pa = check_probability("p_lower", p_lower)
    pb = check_probability("p_upper", p_upper)
    s = check_positive("sigma", sigma)
    shape, (pa, pb, s) = broadcast(pa, pb, s)
    if (pa + pb > 1 + 4 * EPS).any():
        raise ValueError("p_lower + p_upper must be <= 1 (they bound two different labels)")
    # Raising an upper bound is always sound; it keeps probit(p_upper) finite. (p_lower = 1
    # forces p_upper = 0 and has its own exact path.)
    pb = np.where((pb < 1e-300) & (pa < 1.0), 1e-300, pb)
    prep = prepare(atoms)
    a = np.empty(pa.size)
    for sl in chunk_rows(pa.size, prep.n_atoms, budget=1 << 18):
        a[sl] = _multiclass_scaled_radius(prep, pa[sl], pb[sl])
    return output(round_down(s * a), shape)


# --------------------------------------------------------------------------- evaluation


def _shifted(prep: Prepared, a, lam, origin):
    """``t2 = (lam - (g - origin)) / a`` for every row and atom, and a bound on its rounding error.

    ``lam`` is measured from a per-row ``origin`` (a finite log ratio near the
    boundary of the worst-case region), so that the atom the region cuts
    through keeps full precision even when ``a`` is tiny.
    """
    gs = prep.g - origin[:, None]
    exact = gs == 0  # only the origin atom itself is subtracted exactly for certain
    t2 = (lam[:, None] - gs) / a[:, None]
    err = 4 * EPS * np.abs(t2) + np.where(exact, 0.0, EPS * np.abs(gs) / a[:, None])
    return t2, err


def _tails(z):
    """``(Phi(z), Phi(-z))`` from one ``ndtr`` call: the small tail is exact, the other is 1 - it."""
    small = ndtr(-np.abs(z))
    big = 1.0 - small
    neg = z < 0
    return np.where(neg, small, big), np.where(neg, big, small)


def _clean_side(prep: Prepared, a, lam, origin):
    """Approximate clean mass ``F``, its complement ``G``, ``sum p phi(z)`` and ``sum p phi(z) z``."""
    t2, _ = _shifted(prep, a, lam, origin)
    z = t2 + 0.5 * a[:, None]
    dens = np.exp(-0.5 * z * z) / SQRT_2PI
    lower_tail, upper_tail = _tails(z)
    return (prep.p_zero + rowdot(lower_tail, prep.p), rowdot(upper_tail, prep.p),
            rowdot(dens, prep.p), rowdot((dens * z), prep.p))


def _adv_side(prep: Prepared, a, lam, origin):
    """Approximate adversarial mass ``V``, its complement ``W``, and ``dV/da`` on the constraint."""
    t2, _ = _shifted(prep, a, lam, origin)
    zq = t2 - 0.5 * a[:, None]
    dens = np.exp(-0.5 * zq * zq) / SQRT_2PI
    lower_tail, upper_tail = _tails(zq)
    return rowdot(lower_tail, prep.q), rowdot(upper_tail, prep.q) + prep.q_inf, -rowdot(dens, prep.q)


def _proved_bounds(prep: Prepared, a, lam, origin, m_lo, mc_hi):
    """Rigorous check at threshold ``lam``: is ``lam <= lam*``? and bounds on ``V``, ``1 - V``.

    Returns ``(ok, v_lo, w_hi)``; where ``ok``, ``v_lo <= V(a)`` and
    ``w_hi >= 1 - V(a)`` hold for the exact atoms and exact arithmetic.
    """
    t2, t2_err = _shifted(prep, a, lam, origin)
    t3 = 0.5 * a[:, None]
    dz = t2_err + 4 * EPS * t3 + 1e-300  # bound on the rounding error of z and of z - a
    z, zq = t2 + t3, t2 - t3
    f_hi = upper(prep.p_zero + rowdot(phi_upper(z, dz), prep.p)) * prep.rel_up + prep.abs_slack
    g_lo = lower(rowdot(phi_lower(-z, dz), prep.p)) * prep.rel_down
    ok = (f_hi <= m_lo) | (g_lo >= mc_hi)
    direct = lower(rowdot(phi_lower(zq, dz), prep.q)) * prep.rel_down
    comp = upper(rowdot(phi_upper(-zq, dz), prep.q) + prep.q_inf) * prep.rel_up + prep.abs_slack
    v_lo = np.clip(np.maximum(direct, lower(1.0 - comp)), 0.0, 1.0)
    w_hi = np.minimum(comp, upper(1.0 - direct))
    return ok, v_lo, w_hi


def _prove(prep: Prepared, a, lam, origin, m_lo, mc_hi, slope):
    """Step ``lam`` down until it is provably below ``lam*``; return ``(ok, v_lo, w_hi)``.

    ``slope`` is ``dF/dlam``; a step of ``c * min(m, 1 - m) / slope`` lowers the
    clean mass by about the relative margin ``c`` the proof needs.
    """
    ok = np.zeros(a.size, dtype=bool)
    v_lo = np.zeros(a.size)
    w_hi = np.ones(a.size)
    todo = np.arange(a.size)
    target = np.minimum(m_lo, mc_hi)
    step0 = np.where(slope > 0, 4 * prep.margin * target / slope, a)
    for attempt in range(8):
        step = np.maximum(step0[todo] * 10.0**attempt, 4 * EPS * np.abs(lam[todo]) + 1e-300)
        ok_i, v_i, w_i = _proved_bounds(prep, a[todo], lam[todo] - step, origin[todo],
                                        m_lo[todo], mc_hi[todo])
        ok[todo[ok_i]] = True
        v_lo[todo[ok_i]] = v_i[ok_i]
        w_hi[todo[ok_i]] = w_i[ok_i]
        todo = todo[~ok_i]
        if not todo.size:
            break
    return ok, v_lo, w_hi


def _origin(prep: Prepared, m, mc):
    """Per row: the finite log ratio where the discrete fill of mass ``m`` stops, and the
    probit of the fraction of that atom filled (a starting point for small ``a``)."""
    n_zero = int(np.sum(np.isneginf(prep.g_all)))
    cum = np.cumsum(prep.p_all)
    j = np.clip(np.searchsorted(cum, m), n_zero, n_zero + prep.g.size - 1)
    before = np.where(j > 0, cum[j - 1], 0.0)
    frac = np.clip((m - before) / prep.p_all[j], 1e-300, 1.0)
    return prep.g[j - n_zero], probit(frac, 1.0 - frac)


def _solve_lambda(prep: Prepared, a, m, mc, lam0, origin, max_iter: int = _MAX_NEWTON):
    """Approximate ``lam*`` (from ``origin``) with ``F(lam*) = m``; safeguarded Newton on ``probit(F)``."""
    pm = probit(m, mc)
    # Analytic brackets: F >= Phi(z of the largest ratio), F <= p0 + (1-p0) Phi(z of the smallest).
    g_lo, g_hi = prep.g[0] - origin, prep.g[-1] - origin
    rest = 1.0 - prep.p_zero
    pm_rest = probit((m - prep.p_zero) / rest, mc / rest)
    lo = g_lo + a * (pm_rest - 0.5 * a)
    hi = g_hi + a * (pm - 0.5 * a)
    lo = np.where(np.isfinite(lo), lo - 1e-9 * (1 + np.abs(lo)) - a, g_lo - 40 * a - 1.0)
    hi = np.where(np.isfinite(hi), hi + 1e-9 * (1 + np.abs(hi)) + a, g_hi + 40 * a + 1.0)
    lam = np.where((lam0 > lo) & (lam0 < hi), lam0, 0.5 * (lo + hi))
    slope = np.zeros(a.size)
    spread = np.zeros(a.size)
    todo = np.arange(a.size)
    for _ in range(max_iter):
        at = todo
        F, G, s0, s1 = _clean_side(prep, a[at], lam[at], origin[at])
        slope[at] = s0 / a[at]
        spread[at] = np.where(s0 > 0, s1 / np.where(s0 > 0, s0, 1.0), 0.0)
        psi = probit(F, G)
        r = psi - pm[at]
        lo[at] = np.where(r <= 0, lam[at], lo[at])
        hi[at] = np.where(r >= 0, lam[at], hi[at])
        dpsi = slope[at] * SQRT_2PI * np.exp(0.5 * psi * psi)
        new = lam[at] - r / dpsi
        bisect = ~np.isfinite(new) | (new <= lo[at]) | (new >= hi[at])
        new = np.where(bisect, 0.5 * (lo[at] + hi[at]), new)
        done = (np.abs(r) <= 1e-13 * (1 + np.abs(pm[at]))) | \
            (hi[at] - lo[at] <= 4 * EPS * np.abs(lam[at]) + 1e-300)
        lam[at] = np.where(done, lam[at], new)
        todo = at[~done]
        if not todo.size:
            break
    # d lam*/d a along F = m (for warm starts): -a + sum p phi z / sum p phi.
    return lam, slope, spread - a


def _start(prep: Prepared, a, m, mc, origin, frac_probit):
    """Starting ``lam``: the fractional atom's step for small ``a``, the mixture's for large ``a``."""
    mixture = prep.g_mean - origin + a * (probit(m, mc) - 0.5 * a)
    return np.where(a < 1.0, a * (frac_probit - 0.5 * a), mixture)


@_quiet
def _bounds_at_radius(prep: Prepared, m_lo, mc_hi, a):
    """Proved ``(v_lo, w_hi)`` at scaled radii ``a`` (0 means the discrete bound)."""
    v_lo, w_hi = knapsack_bounds(prep, m_lo, mc_hi)
    # V(a) <= V(0): where the discrete bound is 0 or the radius is infinite there is nothing to do.
    full = m_lo >= 1.0  # p = 1: the region is everything, V(a) = V(0) for every a
    rows = np.flatnonzero((a > 0) & (v_lo > 0) & ~full & np.isfinite(a))
    inf_rows = np.isinf(a) & ~full
    v_lo[inf_rows], w_hi[inf_rows] = 0.0, 1.0
    for sl in chunk_rows(rows.size, prep.n_atoms, budget=1 << 18):
        r = rows[sl]
        origin, frac_probit = _origin(prep, m_lo[r], mc_hi[r])
        lam0 = _start(prep, a[r], m_lo[r], mc_hi[r], origin, frac_probit)
        lam, slope, _ = _solve_lambda(prep, a[r], m_lo[r], mc_hi[r], lam0, origin)
        ok, v, w = _prove(prep, a[r], lam, origin, m_lo[r], mc_hi[r], slope)
        # Unproved (a far too small for the evaluation): the total-variation bound still holds.
        tv = total_variation_upper(a[r])
        v_lo[r] = np.maximum(np.where(ok, v, 0.0), lower(v_lo[r] - tv))
        w_hi[r] = np.minimum(np.where(ok, w, 1.0), upper(w_hi[r] + tv))
    return v_lo, w_hi


# --------------------------------------------------------------------------- radius search


def discrete_certified(prep: Prepared, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Proved ``p > tau`` and ``V(0) >= tau``: the budget holds at radius 0 (docs/theory.md §3)."""
    return _discrete_check(prep, p, t)[2]


def _discrete_check(prep: Prepared, p, t):
    """Proved bounds on ``V(0)`` and ``1 - V(0)``, and whether the budget holds at radius 0."""
    v0, w0 = knapsack_bounds(prep, p, complement_up(p))
    return v0, w0, (p > t) & ((v0 >= t) | (w0 <= complement_down(t)))


@_quiet
def _threshold_radius(prep: Prepared, p, t):
    """Scaled radius ``a`` (proved) for the threshold rule, one row per lower bound."""
    m_lo, mc_hi = p, complement_up(p)
    tc_lo = complement_down(t)
    v0, w0, certified0 = _discrete_check(prep, p, t)
    out = np.zeros(p.size)
    out[certified0 & (p >= 1.0)] = np.inf  # V(a) = V(0) for all a when p = 1
    rows = np.flatnonzero(certified0 & (p < 1.0) & (p > t))
    if not rows.size:
        return out
    target = _Target(prep, m_lo[rows], mc_hi[rows], t[rows], tc_lo[rows], v0=v0[rows])
    a_hi = cohen_scaled_radius(p[rows], t[rows]) * (1 + 1e-9) + 1e-300
    a0 = np.clip(probit(v0[rows], w0[rows]) - probit(t[rows], 1.0 - t[rows]), 0.0, a_hi)
    out[rows] = _search(target, a0, a_hi)
    return out


@_quiet
def _multiclass_scaled_radius(prep: Prepared, pa, pb):
    out = np.zeros(pa.size)
    if prep.is_gaussian:
        a = 0.5 * cohen_scaled_radius(pa, pb)
        return np.where(pa > pb, a, 0.0)
    va0, _ = knapsack_bounds(prep, pa, complement_up(pa))
    _, ub0 = knapsack_bounds(prep, complement_down(pb), pb)
    rows = np.flatnonzero((va0 > ub0) & (pa > pb))
    out[(va0 > ub0) & (pa >= 1.0)] = np.inf
    rows = rows[pa[rows] < 1.0]
    if not rows.size:
        return out
    target = _Target(prep, pa[rows], complement_up(pa[rows]), None, None, v0=va0[rows],
                     b_lo=complement_down(pb[rows]), b_hi=pb[rows], u0=ub0[rows])
    a_hi = 0.5 * cohen_scaled_radius(pa[rows], pb[rows]) * (1 + 1e-9) + 1e-300
    a0 = np.clip(0.5 * (probit(va0[rows], 1 - va0[rows]) - probit(ub0[rows], 1 - ub0[rows])),
                 0.0, a_hi)
    out[rows] = _search(target, a0, a_hi)
    return out


class _Target:
    """The radius equation ``h(a) = 0`` of one rule, with approximate and proved evaluations.

    Threshold rule: ``h = probit(V_A(a)) - probit(tau)``. Multiclass: ``h =
    probit(V_A(a)) - probit(U_B(a))`` with ``U_B = 1 - V(1 - p_B)``, so ``B``
    adds a second row per example whose ``V`` enters with the opposite sign.
    """

    def __init__(self, prep, m_lo, mc_hi, t, tc_lo, v0, b_lo=None, b_hi=None, u0=None):
        self.prep, self.n = prep, m_lo.size
        self.v0, self.u0 = v0, u0  # proved bounds at a = 0, for the total-variation shortcut
        self.two = b_lo is not None
        self.m_lo = np.concatenate([m_lo, b_lo]) if self.two else m_lo
        self.mc_hi = np.concatenate([mc_hi, b_hi]) if self.two else mc_hi
        self.t, self.tc_lo = t, tc_lo
        self.origin, self.frac_probit = _origin(prep, self.m_lo, self.mc_hi)
        size = self.m_lo.size
        self.lam, self.dlam, self.a_prev = np.zeros(size), np.zeros(size), np.full(size, np.nan)

    def _rows(self, idx):
        return np.concatenate([idx, idx + self.n]) if self.two else idx

    def _solve(self, idx, a, max_iter: int = _MAX_NEWTON):
        """Threshold ``lam*`` for the rows of examples ``idx`` at ``a``, warm-started."""
        rows = self._rows(idx)
        ar = np.concatenate([a, a]) if self.two else a
        fresh = _start(self.prep, ar, self.m_lo[rows], self.mc_hi[rows], self.origin[rows],
                       self.frac_probit[rows])
        warm = self.lam[rows] + self.dlam[rows] * (ar - self.a_prev[rows])
        start = np.where(np.isnan(self.a_prev[rows]), fresh, warm)
        lam, slope, dlam = _solve_lambda(self.prep, ar, self.m_lo[rows], self.mc_hi[rows], start,
                                         self.origin[rows], max_iter)
        self.lam[rows], self.dlam[rows], self.a_prev[rows] = lam, dlam, ar
        return rows, ar, lam, slope

    def joint(self, a0, a_hi, max_iter: int = 16):
        """Newton on ``(lam, a)`` at once (threshold rule): both equations in probit space.

        Returns ``(a, dh/da, converged)``. Rows that do not converge go to the
        safeguarded nested search; nothing here needs to be right, only fast.
        """
        prep, m, mc = self.prep, self.m_lo, self.mc_hi
        pm, pt = probit(m, mc), probit(self.t, 1.0 - self.t)
        a = np.where(a0 > 0, a0, 0.5 * a_hi)
        _, _, lam, _ = self._solve(np.arange(a.size), a, max_iter=3)  # near the constraint F = m
        lam = lam.copy()
        slope = np.full(a.size, np.nan)
        done = np.zeros(a.size, dtype=bool)
        todo = np.arange(a.size)
        for _ in range(max_iter):
            at, lt = a[todo], lam[todo]
            t2, _ = _shifted(prep, at, lt, self.origin[todo])
            z = t2 + 0.5 * at[:, None]
            zq = t2 - 0.5 * at[:, None]
            dz = np.exp(-0.5 * z * z) / SQRT_2PI
            dq = np.exp(-0.5 * zq * zq) / SQRT_2PI
            fz, gz = _tails(z)
            vq, wq = _tails(zq)
            psi = probit(prep.p_zero + rowdot(fz, prep.p), rowdot(gz, prep.p))
            chi = probit(rowdot(vq, prep.q), rowdot(wq, prep.q) + prep.q_inf)
            s0, s1 = rowdot(dz, prep.p), rowdot(dz * z, prep.p)
            t0, t1 = rowdot(dq, prep.q), rowdot(dq * zq, prep.q)
            e1, e2 = psi - pm[todo], chi - pt[todo]
            scale1 = SQRT_2PI * np.exp(0.5 * psi * psi)  # 1 / phi(psi)
            scale2 = SQRT_2PI * np.exp(0.5 * chi * chi)
            j11, j12 = scale1 * s0 / at, scale1 * (s0 - s1 / at)
            j21, j22 = scale2 * t0 / at, -scale2 * (t1 / at + t0)
            det = j11 * j22 - j12 * j21
            d_lam = (e1 * j22 - e2 * j12) / det
            d_a = (j11 * e2 - j21 * e1) / det
            conv = (np.abs(e1) <= 1e-12) & (np.abs(e2) <= 1e-12)
            slope[todo] = -scale2 * t0  # dh/da along F = m
            self.lam[todo], self.dlam[todo], self.a_prev[todo] = lt, s1 / s0 - at, at
            done[todo[conv]] = True
            # Damp a step that leaves (0, a_hi]: halve it until it stays inside.
            damp = np.ones(todo.size)
            for _ in range(8):
                new_a = at - damp * d_a
                bad = ~((new_a > 0) & (new_a <= a_hi[todo]))
                damp = np.where(bad, 0.5 * damp, damp)
            new_a, new_lam = at - damp * d_a, lt - damp * d_lam
            ok = np.isfinite(new_a) & np.isfinite(new_lam) & (new_a > 0) & (new_a <= a_hi[todo])
            keep = ~conv & ok
            a[todo[keep]], lam[todo[keep]] = new_a[keep], new_lam[keep]
            todo = todo[keep]
            if not todo.size:
                break
        return a, slope, done

    def evaluate(self, idx, a):
        """Approximate ``h`` and ``dh/da`` at ``a`` for examples ``idx``."""
        rows, ar, lam, _ = self._solve(idx, a)
        V, W, dV = _adv_side(self.prep, ar, lam, self.origin[rows])
        chi = probit(V, W)
        dchi = dV * SQRT_2PI * np.exp(0.5 * chi * chi)
        if not self.two:
            return chi - probit(self.t[idx], 1.0 - self.t[idx]), dchi
        k = idx.size
        return chi[:k] + chi[k:], dchi[:k] + dchi[k:]

    def proved(self, idx, a):
        """True where the rule provably holds at every scaled radius up to ``a``."""
        rows, ar, lam, slope = self._solve(idx, a)
        ok, v_lo, w_hi = _prove(self.prep, ar, lam, self.origin[rows], self.m_lo[rows],
                                self.mc_hi[rows], slope)
        tv = total_variation_upper(a)
        if not self.two:
            by_tv = lower(self.v0[idx] - tv) >= self.t[idx]
            return by_tv | (ok & ((v_lo >= self.t[idx]) | (w_hi <= self.tc_lo[idx])))
        k = idx.size
        # Lower bound on V_A against upper bound on U_B = 1 - V_B.
        by_tv = lower(self.v0[idx] - tv) > upper(self.u0[idx] + tv)
        return by_tv | (ok[:k] & ok[k:] & (v_lo[:k] > w_hi[k:]))


def _search(target: _Target, a0, a_hi):
    """Largest proved ``a`` in ``(0, a_hi]``: Newton on ``h``, then proof, then bisection if needed."""
    n = a0.size
    idx_all = np.arange(n)
    lo, hi = np.zeros(n), a_hi.copy()
    if target.two:
        a = np.where(a0 > 0, a0, 0.5 * a_hi)
        slope = np.full(n, np.nan)
        todo = idx_all
    else:
        a, slope, converged = target.joint(a0, a_hi)
        a = np.where(converged, a, np.where(a0 > 0, a0, 0.5 * a_hi))
        todo = idx_all[~converged]
    for _ in range(_MAX_NEWTON if todo.size else 0):
        h, dh = target.evaluate(todo, a[todo])
        slope[todo] = dh
        at = a[todo]
        lo[todo] = np.where(h >= 0, at, lo[todo])
        hi[todo] = np.where(h < 0, at, hi[todo])
        with np.errstate(divide="ignore", invalid="ignore"):
            new = at - h / dh
        bisect = ~np.isfinite(new) | (new <= lo[todo]) | (new >= hi[todo])
        new = np.where(bisect, 0.5 * (lo[todo] + hi[todo]), new)
        done = (np.abs(h) <= 1e-13) | (hi[todo] - lo[todo] <= 1e-14 * hi[todo])
        a[todo] = np.where(done, at, new)
        todo = todo[~done]
        if not todo.size:
            break
    # Prove a value just below the root, backing off by a growing margin in probit units.
    result = np.zeros(n)
    todo = idx_all
    for attempt in range(8):
        margin = 16 * target.prep.margin * 8.0**attempt
        with np.errstate(divide="ignore", invalid="ignore"):
            back = np.where(np.isfinite(slope[todo]) & (slope[todo] < 0),
                            margin / -slope[todo], margin * a[todo])
        cand = a[todo] - np.maximum(back, 4 * EPS * a[todo])
        positive = cand > 0
        proved = np.zeros(todo.size, dtype=bool)
        if positive.any():
            proved[positive] = target.proved(todo[positive], cand[positive])
        result[todo[proved]] = cand[proved]
        todo = todo[~proved]
        if not todo.size:
            return result
    # Bisection on the proved predicate between 0 (proved by the discrete bound) and hi.
    lo_b = np.zeros(todo.size)
    hi_b = np.minimum(a[todo], a_hi[todo])
    for _ in range(_MAX_BISECT):
        mid = 0.5 * (lo_b + hi_b)
        ok = target.proved(todo, mid)
        lo_b = np.where(ok, mid, lo_b)
        hi_b = np.where(ok, hi_b, mid)
    result[todo] = lo_b
    return result
