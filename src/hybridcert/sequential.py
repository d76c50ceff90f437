"""Anytime-valid sequential certification: stop sampling as soon as the question is answered.

The statistic. Certification lower-bounds ``p_A``, the probability that the
base classifier returns the certified label under the noise. A sequential
rule looks at the running count after every *look* and stops when the
certificate's question is settled, so the number of samples is a stopping
time: a Clopper-Pearson bound at level ``alpha`` computed at a data-chosen
``n`` is not valid any more (sampling to a foregone conclusion). We use

**a union of exact Clopper-Pearson bounds over a geometric schedule of
looks.** The looks ``n_1 < n_2 < ... < n_J = n_max`` are fixed before any
sample is drawn (:func:`look_schedule`: 4, then a factor ``sqrt(2)`` each
look, rounded up to a multiple of 4; 30 looks up to 100,000). Look ``j`` gets the level
``alpha_j = alpha / J`` (:meth:`UnionClopperPearson.levels`), and the lower
bound reported after look ``j`` is the running maximum
``L_j = max_{i <= j} CP_lower(k_i, n_i, alpha_i)``.

Accounting. Let ``E_i`` be the event ``CP_lower(k_i, n_i, alpha_i) > p_A``.
Each Clopper-Pearson bound is exact at its fixed ``n_i``, so
``P(E_i) <= alpha_i``. The running maximum exceeds ``p_A`` at *some* look
only on ``E_1 or ... or E_J``, whose probability is at most
``sum_j alpha_j = alpha``. So ``P(exists j: L_j > p_A) <= alpha``: the bound
holds simultaneously at every look, hence at any stopping time built from
the looks, whatever the stopping rule (it may even be adversarial). Nothing
is asymptotic: the only inequality used is the union bound.

Why this one. Against a beta-binomial mixture martingale or a betting
confidence sequence, which are valid at every single sample, the union of
Clopper-Pearson bounds pays ``log J`` (``J = 30`` looks from 4 to 100,000
samples) instead of a ``log n``-type mixture cost,
keeps Clopper-Pearson's exactness for counts near 0 or ``n`` (the common
case: guards that are almost always right), and only looks where the engine
already has a batch boundary, so the rule adds no per-sample work. It needs
a finite ``n_max``, which certification has anyway.

The upper bound (for giving up early) uses the same construction on the
other side, at its own level ``alpha_drop``. It never enters a safety
claim: dropping a target only says "not certified", so a wrong drop costs
power, not soundness, and ``alpha`` is spent on the lower side alone.

Decisions. A *target* ``(d, r)`` asks "is ``p_A(x') >= tau`` for every input
within ``d`` discrete changes and L2 shift ``r``?". The answer is yes as soon
as ``L >= p*(d, r)``, the smallest lower bound that certifies the target
(:func:`certification_thresholds`, found by a bracketing search on the proved
worst-case probability ``V_d(r)`` and rounded up, so a decision by threshold
is never larger than the certificate). A target is *dropped* as hopeless
when the upper bound ``U`` falls below ``p_reach(d, r)``: even if ``p_A``
were ``U``, the expected count at ``n_max`` would not lift the last look's
Clopper-Pearson bound to ``p*(d, r)`` (:func:`reachable_thresholds`).
Frontier mode (:func:`frontier_converged`) stops when the most favourable
projection to ``n_max`` could not raise any ``r*(d)`` by more than a relative
tolerance, or could not certify any budget (early abstention).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr, ndtri

from ._validation import check_int, check_open_unit
from .certificate.atoms import Atoms
from .certificate.frontier import certified_frontier
from .certificate.hybrid import worst_case_probability
from .stats import clopper_pearson_lower, clopper_pearson_upper

__all__ = [
    "CERTIFIED",
    "DROPPED",
    "OPEN",
    "LookRule",
    "LookTrack",
    "SequentialOutcome",
    "UnionClopperPearson",
    "certification_thresholds",
    "decision_counts",
    "frontier_converged",
    "look_schedule",
    "reachable_thresholds",
    "run_targets",
    "target_status",
]

OPEN, CERTIFIED, DROPPED = 0, 1, 2


def look_schedule(n_max: int, *, first: int = 4, ratio: float = 2 ** 0.5, block: int = 4) -> np.ndarray:
    """The sample counts at which a sequential rule looks: ``first``, then ``x ratio``, ``n_max``.

    Every look but the last is rounded up to a multiple of ``block``; the last
    look is ``n_max`` itself. A factor ``sqrt(2)`` overshoots the sample size a
    decision needs by 19% on average (doubling: 44%) for a few more looks,
    which cost ``log`` of their number in the level.

    Parameters
    ----------
    n_max : int >= 1
        Largest number of samples.
    first : int >= 1
        The first look (rounded up to a whole block).
    ratio : float > 1
        Growth factor between looks.
    block : int >= 1

    Returns
    -------
    ndarray of int64, strictly increasing, ending at ``n_max``.
    """
    n_max = check_int("n_max", n_max, minimum=1)
    first = check_int("first", first, minimum=1)
    block = check_int("block", block, minimum=1)
    ratio = float(ratio)
    if not ratio > 1.0 or not np.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number > 1, got {ratio!r}")
    looks = []
    for j in range(10_000):
        # round first: 4 * sqrt(2)**4 is 16.000000000000004 in floating point, and means 16
        x = round(first * ratio**j, 6)
        n = int(-(-int(np.ceil(x)) // block) * block)
        if n >= n_max:
            break
        if not looks or n > looks[-1]:
            looks.append(n)
    looks.append(n_max)
    return np.asarray(looks, dtype=np.int64)


@dataclass(frozen=True)
class UnionClopperPearson:
    """Exact anytime-valid bounds on a binomial proportion at fixed looks (module docstring).

    Parameters
    ----------
    looks : sequence of int
        Strictly increasing sample counts, fixed in advance.
    alpha : float in (0, 1)
        Total level of the lower confidence sequence:
        ``P(exists look j: lower_j > p) <= alpha``.
    alpha_drop : float in (0, 1), optional
        Total level of the upper confidence sequence (default ``alpha``).
    """

    looks: tuple[int, ...]
    alpha: float
    alpha_drop: float | None = None

    def __post_init__(self):
        looks = tuple(int(n) for n in self.looks)
        if not looks or looks[0] < 1 or any(b <= a for a, b in itertools.pairwise(looks)):
            raise ValueError("looks must be a non-empty, strictly increasing sequence of counts >= 1")
        object.__setattr__(self, "looks", looks)
        object.__setattr__(self, "alpha", float(check_open_unit("alpha", self.alpha)))
        drop = self.alpha if self.alpha_drop is None else self.alpha_drop
        object.__setattr__(self, "alpha_drop", float(check_open_unit("alpha_drop", drop)))

    @property
    def n_max(self) -> int:
        return self.looks[-1]

    def levels(self) -> np.ndarray:
        """``alpha_j`` of each look: ``alpha / J``; they sum to ``alpha`` (the union bound)."""
        return np.full(len(self.looks), self.alpha / len(self.looks))

    def lower(self, successes, look):
        """Clopper-Pearson lower bound of look ``look`` (an index, or an array of indices,
        one per count: one vectorised call for inputs at different looks) at level
        ``alpha / J``. The caller keeps the running maximum over looks (:meth:`lower_path`)."""
        return clopper_pearson_lower(successes, self._n_at(look), self.alpha / len(self.looks))

    def upper(self, successes, look):
        """Clopper-Pearson upper bound of look ``look`` (index or indices) at level
        ``alpha_drop / J``."""
        return clopper_pearson_upper(successes, self._n_at(look),
                                     self.alpha_drop / len(self.looks))

    def _n_at(self, look):
        return self.looks[look] if np.ndim(look) == 0 else np.asarray(self.looks)[look]

    def lower_path(self, successes) -> np.ndarray:
        """Running lower bound after each look from the counts ``successes[..., j]`` at the looks."""
        k = np.asarray(successes)
        out = np.stack([self.lower(k[..., j], j) for j in range(k.shape[-1])], axis=-1)
        return np.maximum.accumulate(out, axis=-1)

    def upper_path(self, successes) -> np.ndarray:
        """Running upper bound after each look (running minimum)."""
        k = np.asarray(successes)
        out = np.stack([self.upper(k[..., j], j) for j in range(k.shape[-1])], axis=-1)
        return np.minimum.accumulate(out, axis=-1)

    def describe(self) -> dict:
        return {"confidence_sequence": "union-clopper-pearson", "looks": list(self.looks),
                "alpha": self.alpha, "alpha_drop": self.alpha_drop,
                "level_per_look": self.alpha / len(self.looks)}


# --------------------------------------------------------------------------- thresholds


_THRESHOLD_MARGIN = 1e-12   # relative, the margin of stats.clopper_pearson_lower


def certification_thresholds(
    radii,
    *,
    d_max: int,
    sigma: float | None,
    tau: float,
    atoms: Callable[[int], Sequence[Atoms]] | Sequence[Sequence[Atoms]],
    iterations: int = 64,
) -> np.ndarray:
    """``p*(d, r)``: the smallest lower bound on ``p_A`` that certifies budget ``d`` at radius ``r``.

    Certifying ``(d, r)`` means ``V_{d'}(r) > tau`` for every ``d' <= d`` (an
    attacker may change fewer positions) and every attacker option of the
    budget. ``V`` is non-decreasing in ``p_A``, so the set of certifying
    values is an interval ``[p*, 1]``; ``p*`` is found in probit
    space on :func:`~hybridcert.worst_case_probability` (a proved lower bound
    of ``V``), by a bracketing search (regula falsi with the Illinois step,
    a few evaluations instead of 64 bisections), and the upper end of the
    final bracket is returned, raised by ``1e-12`` relative: ``V(p*)``
    provably exceeds ``tau`` (rounding up, the safe side), and not by a
    rounding error of ``V`` where ``p*`` sits on a kink (an atom's mass),
    so :func:`~hybridcert.certified_frontier` at ``p*`` certifies ``(d, r)``
    too.

    Parameters
    ----------
    radii : array_like of float >= 0
        Target radii (the same for every budget).
    d_max : int >= 0
    sigma : float > 0, or None
        ``None`` (discrete-only smoothing): only ``r = 0`` can be certified.
    tau : float in (0, 1)
    atoms : callable ``d -> list of Atoms``, or a sequence indexed by ``d``
        The attacker's options at each budget (for instance
        ``lambda d: hybridcert.noise.attack_atoms(spec, d)``).
    iterations : int
        Most steps of the bracketing search (:func:`_bracket_root`; it stops
        once the bracket is narrower than ``1e-12`` in probit space).

    Returns
    -------
    ndarray, shape ``(d_max + 1, len(radii))``
        ``inf`` where no ``p_A <= 1`` certifies the target.
    """
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    if radii.ndim != 1 or (radii < 0).any() or not np.isfinite(radii).all():
        raise ValueError("radii must be a 1-D array of finite radii >= 0")
    d_max = check_int("d_max", d_max, minimum=0)
    tau = float(check_open_unit("tau", tau))
    options = [list(atoms(d) if callable(atoms) else atoms[d]) for d in range(d_max + 1)]
    out = np.full((d_max + 1, radii.size), np.inf)
    usable = radii == 0 if sigma is None else np.ones(radii.size, dtype=bool)
    s = 1.0 if sigma is None else float(sigma)
    r = radii[usable]
    for d, opts in enumerate(options):
        if r.size == 0:
            break

        def worst(p, opts=opts):
            return np.min([worst_case_probability(p, sigma=s, atoms=a, radius=r) for a in opts],
                          axis=0)

        ok_at_one = worst(np.ones(r.size)) > tau
        lo = np.full(r.size, float(ndtri(tau)))          # V(tau) <= tau: never certifies
        hi = np.full(r.size, 9.0)                         # Phi(9) = 1 - 1e-19 -> 1.0 in float64

        def excess(z, worst=worst):
            # Interpolated in probit-probit space, where V is nearly linear (exactly so for
            # Gaussian-only smoothing); the side is decided by the exact comparison V > tau.
            v = worst(ndtr(z))
            with np.errstate(divide="ignore"):
                return np.clip(ndtri(v) - ndtri(tau), -40.0, 40.0), v > tau

        hi = _bracket_root(excess, lo, hi, iterations)
        # Rounded up by the Clopper-Pearson bound's own margin (stats._WIDEN): at a kink of V
        # (p* on an atom's mass) V exceeds tau by rounding noise alone, and the threshold must
        # not rest on its sign. Kept where the bump would reach 1.
        p_star = ndtr(hi)
        bumped = p_star * (1 + _THRESHOLD_MARGIN)
        p_star = np.where(bumped < 1.0, bumped, p_star)
        proved = worst(p_star) > tau
        p_star = np.where(proved, p_star, np.where(ok_at_one, 1.0, np.inf))
        out[d, usable] = np.where(ok_at_one, p_star, np.inf)
    return np.maximum.accumulate(out, axis=0)


def _bracket_root(g, lo, hi, iterations: int, xtol: float = 1e-12,
                  root_tol: float = 1e-12) -> np.ndarray:
    """The upper end of a bracket ``[lo, hi]`` of the root of a non-decreasing function, narrowed.

    ``g(z)`` returns ``(value, above)``: the function's value, used only to
    place the next point, and where the point lies above the root, decided
    exactly by the caller. Regula falsi with the Illinois step (the retained
    end's value is halved when the same end moves twice, which keeps the
    convergence superlinear), vectorised over independent problems; a step
    that would leave the open bracket falls back to the midpoint, and a
    point found just below the root (``value >= -root_tol``) is followed by
    one a hair above it instead of a crawl towards it. ``hi`` is
    only ever replaced by a point found ``above``, so the answer is on the
    safe side whatever the number of steps; a problem whose ``hi`` is not
    above keeps it (no root in the bracket).
    """
    lo, hi = np.array(lo, dtype=float), np.array(hi, dtype=float)
    (g_lo, _), (g_hi, rooted) = g(lo), g(hi)
    g_lo = np.minimum(g_lo, 0.0)
    side = np.zeros(lo.shape, dtype=int)         # +1: hi moved last, -1: lo moved last
    at_root = np.zeros(lo.shape, dtype=bool)
    for _ in range(iterations):
        open_ = rooted & (hi - lo > xtol)
        if not open_.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            z = hi - g_hi * (hi - lo) / (g_hi - g_lo)
        bad = ~np.isfinite(z) | (z <= lo) | (z >= hi)
        z = np.where(bad, 0.5 * (lo + hi), z)
        # lo on the root itself (a value of 0 below it): the answer is just above lo
        z = np.where(open_, np.where(at_root, np.minimum(lo + 0.5 * xtol, z), z), hi)
        g_z, above = g(z)
        up, down = open_ & above, open_ & ~above
        at_root = down & (g_z >= -root_tol)
        g_lo = np.where(up & (side == 1), 0.5 * g_lo, g_lo)
        g_hi = np.where(down & (side == -1), 0.5 * g_hi, g_hi)
        hi, g_hi = np.where(up, z, hi), np.where(up, np.maximum(g_z, root_tol), g_hi)
        lo, g_lo = np.where(down, z, lo), np.where(down, np.minimum(g_z, 0.0), g_lo)
        side = np.where(up, 1, np.where(down, -1, side))
    return hi


def reachable_thresholds(p_star, cs: UnionClopperPearson) -> np.ndarray:
    """``p_reach``: below it, even the expected count at ``n_max`` cannot certify ``p*``.

    ``p_reach = k_min / n_max`` where ``k_min`` is the smallest count whose
    last-look Clopper-Pearson bound reaches ``p*`` (``inf`` when none does).
    Dropping a target when the upper bound falls below ``p_reach`` only costs
    power, never soundness (module docstring).
    """
    p_star = np.asarray(p_star, dtype=float)
    n = cs.n_max
    level = cs.alpha / len(cs.looks)
    target = p_star[np.isfinite(p_star) & (p_star < 1.0)]
    k_min = _smallest_count(lambda k: np.asarray(clopper_pearson_lower(k, n, level)) >= target,
                            np.full(target.shape, n))
    k = np.full(p_star.shape, np.inf)
    k[np.isfinite(p_star) & (p_star < 1.0)] = np.where(k_min <= n, k_min, np.inf)
    return np.where(p_star <= 0, 0.0, k / n)


def _smallest_count(good: Callable[[np.ndarray], np.ndarray], n: np.ndarray) -> np.ndarray:
    """The smallest count ``k`` in ``[0, n]`` with ``good(k)``, elementwise (``n + 1`` where
    none): an integer bisection, vectorised, for a ``good`` that is False then True as ``k``
    grows (a Clopper-Pearson bound against a threshold: the bounds increase with the count)."""
    n = np.asarray(n, dtype=np.int64)
    lo, hi = np.full(n.shape, -1, dtype=np.int64), n + 1
    while (open_ := hi - lo > 1).any():
        mid = (lo + hi) // 2
        ok = good(np.clip(mid, 0, n)) & (mid <= n)
        hi, lo = np.where(open_ & ok, mid, hi), np.where(open_ & ~ok, mid, lo)
    return hi


def decision_counts(cs: UnionClopperPearson, p_star, p_reach) -> tuple[np.ndarray, np.ndarray]:
    """The counts at which each look can decide each target, shape ``(looks, targets)`` each.

    ``k_certify[j, t]``: the smallest count whose Clopper-Pearson lower bound at
    look ``j`` reaches ``p*_t`` (``n_j + 1``: none does). ``k_drop[j, t]``: the
    largest count whose upper bound at look ``j`` falls below ``p_reach_t``
    (``-1``: none does). Integer bisection on each side, the bounds being
    increasing in the count.
    """
    p_star = np.asarray(p_star, dtype=float)[None, :]
    p_reach = np.asarray(p_reach, dtype=float)[None, :]
    shape = (len(cs.looks), p_star.shape[1])
    n = np.broadcast_to(np.asarray(cs.looks, dtype=np.int64)[:, None], shape)
    look = np.broadcast_to(np.arange(shape[0])[:, None], shape)
    with np.errstate(invalid="ignore"):
        k_certify = _smallest_count(lambda k: np.asarray(cs.lower(k, look)) >= p_star, n)
        # the largest count that drops: one below the smallest that does not
        k_drop = _smallest_count(lambda k: ~(np.asarray(cs.upper(k, look)) < p_reach), n) - 1
    return k_certify, k_drop


def target_status(lower, upper, p_star, p_reach, previous=None) -> np.ndarray:
    """``CERTIFIED`` where ``lower >= p*``, ``DROPPED`` where ``upper < p_reach``, else ``OPEN``.

    Broadcasts ``lower``/``upper`` (one per example, shape ``(..., 1)``)
    against the targets. A decided target stays decided (``previous``).
    """
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    status = np.where(lower >= p_star, CERTIFIED, np.where(upper < p_reach, DROPPED, OPEN))
    if previous is not None:
        status = np.where(previous != OPEN, previous, status)
    return status


@dataclass(frozen=True)
class SequentialOutcome:
    """What a sequential run decided, for one example or a population.

    Attributes
    ----------
    samples : int or ndarray
        Samples drawn (the look at which the rule stopped).
    successes : int or ndarray
        Count of the certified label among them.
    lower, upper : float or ndarray
        Running confidence-sequence bounds at the stopping look.
    status : ndarray
        Per target: ``CERTIFIED``, ``DROPPED`` or ``OPEN`` (undecided at ``n_max``:
        not certified).
    """

    samples: np.ndarray
    successes: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    status: np.ndarray


def run_targets(draw: Callable[[int, int], np.ndarray], cs: UnionClopperPearson, p_star,
                *, drop: bool = True) -> SequentialOutcome:
    """Target mode for a population of ``m`` examples at once, look by look.

    Parameters
    ----------
    draw : callable ``(start, stop) -> successes``
        Draws samples ``start..stop-1`` of every still-running example and
        returns their success counts, shape ``(m,)`` (entries of finished
        examples are ignored).
    cs : UnionClopperPearson
    p_star : array_like, shape ``(m, T)`` or ``(T,)``
        Certification thresholds of the targets (:func:`certification_thresholds`).
    drop : bool
        Drop hopeless targets early with the upper bound.
    """
    p_star = np.atleast_1d(np.asarray(p_star, dtype=float))
    p_reach = reachable_thresholds(p_star, cs) if drop else np.full(p_star.shape, -np.inf)
    k = None
    status = lower = upper = samples = successes = None
    start = 0
    for j, n in enumerate(cs.looks):
        got = np.asarray(draw(start, n), dtype=np.int64)
        if k is None:
            m = got.shape[0]
            k = np.zeros(m, dtype=np.int64)
            lower = np.zeros(m)
            upper = np.ones(m)
            status = np.broadcast_to(np.full(p_star.shape, OPEN), (m, p_star.shape[-1])).copy()
            samples = np.zeros(m, dtype=np.int64)
            successes = np.zeros(m, dtype=np.int64)
            running = np.ones(m, dtype=bool)
        k = np.where(running, k + got, k)
        lower = np.where(running, np.maximum(lower, cs.lower(k, j)), lower)
        upper = np.where(running, np.minimum(upper, cs.upper(k, j)), upper)
        new = target_status(lower[:, None], upper[:, None], p_star, p_reach, status)
        status = np.where(running[:, None], new, status)
        samples = np.where(running, n, samples)
        successes = np.where(running, k, successes)
        running = running & (status == OPEN).any(axis=1)
        start = n
        if not running.any():
            break
    return SequentialOutcome(samples=samples, successes=successes, lower=lower, upper=upper,
                             status=status)


# --------------------------------------------------------------------------- one input's looks


@dataclass
class LookTrack:
    """One input's progress through the looks of a :class:`LookRule` (mutable state).

    ``k`` successes in the ``used`` samples drawn so far; ``look`` is the index
    of the next look and ``last`` that of the last look of the next request
    (:meth:`LookRule.span`); ``lower``/``upper`` the running bounds; ``status``
    one entry per target (``None`` in frontier mode).
    """

    status: np.ndarray | None
    k: int = 0
    used: int = 0
    look: int = 0
    last: int = 0
    lower: float = 0.0
    upper: float = 1.0
    look_counts: list = field(default_factory=list)
    done: bool = False


@dataclass(frozen=True, eq=False)
class LookRule:
    """The stopping rule of a run: everything that depends on its settings only, built once.

    One rule serves every input with the same attack specification and
    settings; :meth:`update` is the one per-look step, vectorised over the
    inputs that reached a look together (one Clopper-Pearson call for all of
    them), used by a single certification and by the scheduler alike.

    Looks that cannot decide. In target mode a request runs to the first look
    at which some open target *could* change status, given the count so far
    (:meth:`span`): certified if every further sample succeeds, or dropped if
    every one fails. The looks it passes are still looked at, from their
    counts (:meth:`update` takes one count per look), so the running bounds,
    ``look_counts``, the stopping look and every status are those of looking
    at each look in turn; only the model calls are fewer and fuller. The
    count thresholds behind :meth:`span` (:func:`decision_counts`) are found
    by bisection on the very bounds :meth:`update` computes. They decide only
    where a request ends, never a bound: the certificate is valid whatever
    they are.

    Parameters
    ----------
    cs : UnionClopperPearson
    p_star : ndarray or None
        Target mode: ``p*(d, r)`` of each target; ``None``: frontier mode.
    frontier : dict or None
        Frontier mode: ``sigma``, ``tau``, ``atoms``, ``rtol`` of
        :func:`frontier_converged`.
    info : dict
        What every certificate of the rule records under ``settings["sequential"]``
        before its own ``look_counts`` and ``status``.
    """

    cs: UnionClopperPearson
    p_star: np.ndarray | None
    frontier: dict | None
    info: dict
    p_reach: np.ndarray | None = field(init=False)

    _k_certify: np.ndarray | None = field(init=False, repr=False)
    _k_drop: np.ndarray | None = field(init=False, repr=False)
    _first_last: int = field(init=False, repr=False)

    def __post_init__(self):
        reach = None if self.p_star is None else reachable_thresholds(self.p_star, self.cs)
        object.__setattr__(self, "p_reach", reach)
        certify = drop = None
        if self.p_star is not None:
            certify, drop = decision_counts(self.cs, self.p_star, reach)
        object.__setattr__(self, "_k_certify", certify)
        object.__setattr__(self, "_k_drop", drop)
        # every input starts in the same state: its first request is the rule's
        object.__setattr__(self, "_first_last", int(self._span_ends([self._fresh()])[0]))

    def _fresh(self) -> LookTrack:
        return LookTrack(None if self.p_star is None else np.full(self.p_star.shape, OPEN))

    def start(self) -> LookTrack:
        track = self._fresh()
        track.last = self._first_last
        return track

    def span(self, track: LookTrack) -> tuple[int, int]:
        """The samples ``(start, stop)`` of ``track``'s next request: up to the first look at
        which a status can change (class docstring); frontier mode: the next look."""
        return track.used, self.cs.looks[track.last]

    def cuts(self, track: LookTrack) -> tuple[int, ...]:
        """The looks (sample counts) inside and at the end of :meth:`span`: one count each."""
        return self.cs.looks[track.look:track.last + 1]

    def shorten(self, track: LookTrack, room: int) -> bool:
        """End the next request at its last look within ``room`` more samples; False if none."""
        fits = [j for j in range(track.look, track.last + 1)
                if self.cs.looks[j] - track.used <= room]
        if not fits:
            return False
        track.last = fits[-1]
        return True

    def _span_ends(self, tracks: Sequence[LookTrack]) -> np.ndarray:
        """Index of the first look at or after each track's next one where an open target
        could change status (the last look always can); frontier mode: the next look."""
        look = np.array([t.look for t in tracks], dtype=np.int64)
        last = len(self.cs.looks) - 1
        if self.p_star is None:
            return np.minimum(look, last)
        n = np.asarray(self.cs.looks, dtype=np.int64)
        k = np.array([t.k for t in tracks], dtype=np.int64)[:, None, None]
        most = k + (n[None, :] - np.array([t.used for t in tracks])[:, None])[:, :, None]
        could = (most >= self._k_certify[None]) | (k <= self._k_drop[None])
        could &= np.stack([t.status == OPEN for t in tracks])[:, None, :]
        could = could.any(axis=2) & (np.arange(n.size)[None, :] >= look[:, None])
        could[:, last] = True
        return could.argmax(axis=1)

    def update(self, tracks: Sequence[LookTrack], successes: Sequence[Sequence[int]]) -> None:
        """Add each track's new successes, one count per look of its request (:meth:`cuts`),
        look at those looks and decide, all tracks at once (one Clopper-Pearson call)."""
        if not tracks:
            return
        counts = [np.asarray(s, dtype=np.int64).reshape(-1) for s in successes]
        sizes = np.array([c.size for c in counts], dtype=np.int64)
        if any(c.size != t.last - t.look + 1 for t, c in zip(tracks, counts, strict=True)):
            raise ValueError("update needs one count per look of each track's request")
        running = np.concatenate([t.k + np.cumsum(c) for t, c in zip(tracks, counts)])
        looks = np.concatenate([np.arange(t.look, t.last + 1) for t in tracks])
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        k = running[first + sizes - 1]
        lower = np.maximum([t.lower for t in tracks],
                           np.maximum.reduceat(np.atleast_1d(self.cs.lower(running, looks)), first))
        upper = np.minimum([t.upper for t in tracks],
                           np.minimum.reduceat(np.atleast_1d(self.cs.upper(running, looks)), first))
        if self.p_star is None:
            f = self.frontier
            done = frontier_converged(lower, upper, self.cs, sigma=f["sigma"], tau=f["tau"],
                                      atoms=f["atoms"], rtol=f["rtol"])
            status = [None] * len(tracks)
        else:
            status = target_status(lower[:, None], upper[:, None], self.p_star, self.p_reach,
                                   np.stack([t.status for t in tracks]))
            done = ~(status == OPEN).any(axis=1)
        last = len(self.cs.looks) - 1
        for i, t in enumerate(tracks):
            t.k, t.used = int(k[i]), self.cs.looks[t.last]
            t.look_counts.extend(running[first[i]:first[i] + sizes[i]].tolist())
            t.lower, t.upper = float(lower[i]), float(upper[i])
            t.status = status[i]
            t.done = bool(done[i]) or t.last == last
            t.look = t.last + 1
        going = [t for t in tracks if not t.done]
        if going:
            for t, end in zip(going, self._span_ends(going)):
                t.last = int(end)

    def record(self, track: LookTrack, status_names: dict) -> dict:
        """``settings["sequential"]`` of a certificate that stopped at ``track``."""
        out = {**_plain_copy(self.info), "look_counts": list(track.look_counts)}
        if track.status is not None:
            out["status"] = [status_names[int(v)] for v in track.status]
        return out


def _plain_copy(value):
    """A deep copy of JSON-like data (dicts, lists, scalars): each certificate owns its record
    (``copy.deepcopy`` costs ten times more, once per certified input)."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value


# --------------------------------------------------------------------------- frontier mode


def frontier_converged(lower, upper, cs: UnionClopperPearson, *, sigma: float | None, tau: float,
                       atoms: Sequence[Sequence[Atoms]], rtol: float) -> np.ndarray:
    """Frontier mode's stopping test, vectorised over examples.

    The most favourable projection: if ``p_A`` were the upper bound ``U``, the
    last look would give at best ``L_proj = CP_lower(ceil(U n_max), n_max)``.
    Stop when either ``L_proj`` certifies no budget (early abstention: no
    further sample can help), or every budget keeps the same certified status
    under ``L_proj`` as under the current ``L`` and ``r*(d; L_proj) <=
    (1 + rtol) r*(d; L)`` (more samples cannot raise any radius by more than
    ``rtol``).
    """
    lower = np.atleast_1d(np.asarray(lower, dtype=float))
    upper = np.atleast_1d(np.asarray(upper, dtype=float))
    n = cs.n_max
    k_best = np.minimum(np.ceil(upper * n), n)
    projected = np.asarray(clopper_pearson_lower(k_best, n, cs.alpha / len(cs.looks)))
    projected = np.maximum(projected, lower)
    s = 1.0 if sigma is None else sigma
    now = certified_frontier(lower, sigma=s, tau=tau, atoms=list(atoms))
    best = certified_frontier(projected, sigma=s, tau=tau, atoms=list(atoms))
    hopeless = np.asarray(best.largest_budget) < 0
    if sigma is None:
        close = np.ones(lower.shape, dtype=bool)
    else:
        with np.errstate(invalid="ignore"):
            close = np.all((best.radii <= (1 + rtol) * now.radii) | (best.radii == now.radii),
                           axis=-1)
    same = np.asarray(best.largest_budget) == np.asarray(now.largest_budget)
    return hopeless | (same & close)
