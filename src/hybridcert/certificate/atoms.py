"""Discrete likelihood-ratio atoms (docs/theory.md §2).

An attacked position is a small *experiment*: a pair of distributions
``(P_i, Q_i)`` over a few outcome classes, the law of the noisy symbol under
the clean input ``x`` and under the attacked input ``x'``. The noise on ``d``
attacked positions is the product of their experiments; grouped by equal
likelihood ratio, that product is a short list of *atoms*
``(p_clean, p_adv, gamma)`` with ``p_adv = gamma * p_clean``. The
Neyman-Pearson certificates (``discrete``, ``hybrid``) need nothing else.

Exactness. Probabilities are combined in log space (multinomial coefficients
by ``gammaln``, sums by log-sum-exp), so atoms stay accurate to a few units in
the 13th digit for ``d`` up to hundreds and alphabets up to ``1e9`` symbols,
where the linear-space masses underflow. Outcomes are only merged when their
likelihood ratios are *exactly* equal (checked in rational arithmetic on the
floats that define them): merging outcomes of different ratios is a garbling
of the experiment and would make a certificate too large. Ratios 0 and
infinity (``beta = 1``, a symbol the noise cannot produce) are kept as their
own atoms, never approximated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache, cached_property

import numpy as np
from scipy.special import gammaln

from .._validation import check_beta, check_int

__all__ = [
    "Atoms",
    "PositionExperiment",
    "absorbing_atoms",
    "absorbing_experiment",
    "categorical_atoms",
    "field_choices",
    "product_atoms",
    "uniform_atoms",
    "uniform_experiment",
]

_EPS = float(np.finfo(float).eps)
# Kinds of atom: likelihood ratio 0 (only the clean input can produce it), finite, infinite.
_ZERO, _FINITE, _INF = -1, 0, 1


@dataclass(frozen=True, eq=False)
class Atoms:
    """Likelihood-ratio atoms of a discrete experiment, sorted by ratio.

    Parameters
    ----------
    log_ratio : array_like, shape (K,)
        ``log gamma_k``; ``-inf`` for atoms impossible under the attacked input,
        ``+inf`` for atoms impossible under the clean input.
    log_p_clean, log_p_adv : array_like, shape (K,)
        Natural logarithms of the atom masses under the clean input ``x`` and
        the attacked input ``x'`` (``-inf`` for mass 0).
    rel_error : float, optional
        A bound on the relative error of every mass and ratio (as computed by
        the constructors below from the magnitudes involved, about 1e-13 at
        ``d = 64``, ``V = 1e9``). The certificates widen their margins by it.
        Default: only the error of exponentiating the given logs.

    Attributes
    ----------
    p_clean, p_adv, ratio : ndarray
        The masses and ``gamma = exp(log_ratio)`` in linear space (masses far
        below 1e-308 underflow to 0 there; the log arrays keep them).

    Iterating gives ``(p_clean, p_adv, ratio)``, the triple of docs/theory.md.
    Build atoms with :func:`uniform_atoms`, :func:`absorbing_atoms`,
    :func:`categorical_atoms`, :func:`product_atoms` or
    :meth:`Atoms.from_probabilities`.
    """

    log_ratio: np.ndarray
    log_p_clean: np.ndarray
    log_p_adv: np.ndarray
    rel_error: float | None = None
    # Cached preparations of the certificate code live in the instance dict.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        arrays = [np.array(a, dtype=float).ravel() for a in
                  (self.log_ratio, self.log_p_clean, self.log_p_adv)]
        if not arrays[0].size or len({a.size for a in arrays}) != 1:
            raise ValueError("atoms need equally long, non-empty log_ratio, log_p_clean, log_p_adv")
        if any(np.isnan(a).any() for a in arrays):
            raise ValueError("atoms must not contain NaN")
        lr, lp, lq = arrays
        if (lp > 1e-12).any() or (lq > 1e-12).any():
            raise ValueError("atom masses must be <= 1 (log masses <= 0)")
        if ((lp == -np.inf) & (lq == -np.inf)).any():
            raise ValueError("an atom must have positive mass under x or under x'")
        if ((lp == -np.inf) != (lr == np.inf)).any() or ((lq == -np.inf) != (lr == -np.inf)).any():
            raise ValueError("log_ratio must be +inf exactly where p_clean = 0 and -inf where p_adv = 0")
        finite = np.isfinite(lr)
        if (np.abs(lq[finite] - lp[finite] - lr[finite]) > 1e-9 * (1 + np.abs(lr[finite]))).any():
            raise ValueError("log_ratio must equal log_p_adv - log_p_clean")
        if self.rel_error is None:  # the logs are exact; exp() of them is not
            rel = 4 * _EPS * (1 + np.abs(lp[finite]) + np.abs(lq[finite])).max(initial=1.0)
            object.__setattr__(self, "rel_error", float(rel))
        elif not 0 <= self.rel_error < 1e-3:
            raise ValueError(f"rel_error must lie in [0, 1e-3), got {self.rel_error!r}")
        order = np.argsort(lr, kind="stable")
        for name, arr in zip(("log_ratio", "log_p_clean", "log_p_adv"), arrays):
            arr = arr[order]
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @classmethod
    def from_probabilities(cls, p_clean, p_adv) -> Atoms:
        """Atoms from explicit masses; the ratio is ``p_adv / p_clean`` (0 and inf allowed)."""
        p = np.asarray(p_clean, dtype=float).ravel()
        q = np.asarray(p_adv, dtype=float).ravel()
        if p.shape != q.shape or not (np.isfinite(p).all() and np.isfinite(q).all()) or \
                ((p < 0) | (q < 0)).any():
            raise ValueError("p_clean and p_adv must be finite, non-negative arrays of one shape")
        for name, masses in (("p_clean", p), ("p_adv", q)):
            # Each is a probability distribution over the outcomes; a mass missing or
            # counted twice would move the Neyman-Pearson fill (and the certificate).
            total = math.fsum(masses.tolist())
            if abs(total - 1.0) > 1e-9:
                raise ValueError(f"{name} must sum to 1 (a distribution over the outcomes), "
                                 f"got {total!r}")
        keep = (p > 0) | (q > 0)
        p, q = p[keep], q[keep]
        with np.errstate(divide="ignore"):
            lp, lq = np.log(p), np.log(q)
        lr = np.where(p == 0, np.inf, np.where(q == 0, -np.inf, lq - lp))
        return cls(lr, lp, lq)

    @cached_property
    def p_clean(self) -> np.ndarray:
        return _readonly(np.exp(self.log_p_clean))

    @cached_property
    def p_adv(self) -> np.ndarray:
        return _readonly(np.exp(self.log_p_adv))

    @cached_property
    def ratio(self) -> np.ndarray:
        return _readonly(np.exp(self.log_ratio))

    def __len__(self) -> int:
        return int(self.log_ratio.size)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.p_clean, self.p_adv, self.ratio))

    def __repr__(self) -> str:
        return f"Atoms(K={len(self)}, log_ratio=[{self.log_ratio[0]:.4g} .. {self.log_ratio[-1]:.4g}])"


@dataclass(frozen=True)
class PositionExperiment:
    """The law of one attacked position's noisy symbol under ``x`` and under ``x'``.

    Parameters
    ----------
    p_clean, p_adv : tuple of float
        Masses of a few outcome classes under the clean and the attacked input;
        each sums to 1. A class may pool several noisy symbols only if they all
        have the same likelihood ratio.
    labels : tuple of str, optional
        Names of the outcome classes, for display.
    """

    p_clean: tuple[float, ...]
    p_adv: tuple[float, ...]
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        p = tuple(float(v) for v in self.p_clean)
        q = tuple(float(v) for v in self.p_adv)
        if len(p) != len(q) or not p:
            raise ValueError("p_clean and p_adv need the same, non-zero number of outcome classes")
        if any(not np.isfinite(v) or v < 0 for v in p + q):
            raise ValueError("outcome masses must be finite and >= 0")
        if abs(sum(p) - 1) > 1e-12 or abs(sum(q) - 1) > 1e-12:
            raise ValueError(f"outcome masses must sum to 1, got {sum(p)!r} and {sum(q)!r}")
        object.__setattr__(self, "p_clean", p)
        object.__setattr__(self, "p_adv", q)
        object.__setattr__(self, "labels", tuple(self.labels))


def uniform_experiment(
    *, beta: float, vocab_size: int, clean_in_alphabet: bool = True, adv_in_alphabet: bool = True
) -> PositionExperiment:
    """One position under uniform substitution noise (docs/theory.md §2.1 and §2.3).

    With probability ``1 - beta`` the symbol is kept; otherwise it is replaced
    by one drawn uniformly from the noise alphabet (``vocab_size`` symbols)
    minus the current symbol. Outcome classes: the noisy symbol equals the
    clean symbol, equals the attacker's symbol, or is anything else.

    Parameters
    ----------
    beta : float in (0, 1]
        Substitution probability.
    vocab_size : int >= 2
        Size of the noise alphabet ``V`` (``V_eff`` for a restricted alphabet).
    clean_in_alphabet : bool
        False when the clean symbol is outside the noise alphabet: its
        replacement is then uniform over all ``V`` alphabet symbols.
    adv_in_alphabet : bool
        False when the attacker writes a symbol outside the noise alphabet:
        the noise can then never produce it from ``x`` (ratio infinity).
    """
    beta = check_beta(beta)
    v = check_int("vocab_size", vocab_size, minimum=2)
    keep = 1.0 - beta
    labels = ("z = x", "z = x'", "other")
    if clean_in_alphabet and adv_in_alphabet:
        swap = beta / (v - 1)
        other = beta * ((v - 2) / (v - 1))
        return PositionExperiment((keep, swap, other), (swap, keep, other), labels)
    if adv_in_alphabet:  # x outside, x' inside: x' never yields x; x yields each symbol w.p. beta/V
        return PositionExperiment((keep, beta / v, beta * ((v - 1) / v)), (0.0, keep, beta), labels)
    if clean_in_alphabet:  # x inside, x' outside: x never yields x'
        return PositionExperiment((keep, 0.0, beta), (beta / v, keep, beta * ((v - 1) / v)), labels)
    return PositionExperiment((keep, 0.0, beta), (0.0, keep, beta), labels)


def absorbing_experiment(*, beta: float) -> PositionExperiment:
    """One position under absorbing (mask) noise: kept w.p. ``1 - beta``, else masked."""
    beta = check_beta(beta)
    return PositionExperiment((1.0 - beta, 0.0, beta), (0.0, 1.0 - beta, beta),
                              ("z = x", "z = x'", "mask"))


def uniform_atoms(d: int, *, beta: float, vocab_size: int) -> Atoms:
    """Atoms of ``d`` positions changed under uniform substitution (docs/theory.md §2.1).

    Parameters
    ----------
    d : int >= 0
        Number of differing positions (the budget; the worst case uses all of it).
    beta : float in (0, 1]
        Substitution probability.
    vocab_size : int >= 2
        Alphabet size ``V``.

    Returns
    -------
    Atoms
        At most ``2d + 1`` atoms, one per ``k = b - a`` in ``{-d, ..., d}``
        with ``gamma = rho**k``, ``rho = (1 - beta)(V - 1) / beta``.
        ``d = 0`` gives the single atom ``(1, 1, 1)``; ``beta = 1`` gives
        atoms of ratio 0 and infinity.
    """
    d = check_int("d", d, minimum=0)
    return product_atoms([(uniform_experiment(beta=beta, vocab_size=vocab_size), d)])


def absorbing_atoms(d: int, *, beta: float) -> Atoms:
    """Atoms of ``d`` positions changed under absorbing (mask) noise (docs/theory.md §2.2).

    Returns the atoms ``(1 - beta**d, 0, 0)``, ``(0, 1 - beta**d, inf)`` and
    ``(beta**d, beta**d, 1)`` (the first two absent for ``beta = 1``, the
    last for ``d = 0`` being the only one).
    """
    d = check_int("d", d, minimum=0)
    return product_atoms([(absorbing_experiment(beta=beta), d)])


def categorical_atoms(arities: Sequence[int], *, beta: float) -> Atoms:
    """Atoms of tabular fields of the given arities, all changed (docs/theory.md §2.1, heterogeneous).

    Each field ``i`` is noised by uniform substitution over its own ``V_i``
    categories; positions are grouped by arity, and atoms are the product over
    the groups. ``arities=[]`` gives the single atom of ``d = 0``.
    """
    counts: dict[int, int] = {}
    for a in arities:
        v = check_int("arities", a, minimum=2)
        counts[v] = counts.get(v, 0) + 1
    return product_atoms(
        [(uniform_experiment(beta=beta, vocab_size=v), n) for v, n in sorted(counts.items())]
    )


def field_choices(arities: Sequence[int], d: int) -> list[tuple[int, ...]]:
    """The distinct multisets of ``d`` arities an attacker can pick from ``arities``.

    Fields of equal arity are interchangeable for the certificate, so choosing
    which ``d`` fields to change reduces to choosing how many of each arity:
    ``prod(count_j + 1)`` choices at most, not ``C(n, d)``.
    """
    d = check_int("d", d, minimum=0)
    counts: dict[int, int] = {}
    for a in arities:
        v = check_int("arities", a, minimum=2)
        counts[v] = counts.get(v, 0) + 1
    if d > sum(counts.values()):
        raise ValueError(f"d must be <= the number of fields ({sum(counts.values())}), got {d}")
    values = sorted(counts)
    choices = []
    for taken in itertools.product(*(range(counts[v] + 1) for v in values)):
        if sum(taken) == d:
            choices.append(tuple(v for v, n in zip(values, taken) for _ in range(n)))
    return choices


def product_atoms(groups: Iterable[tuple[PositionExperiment, int]]) -> Atoms:
    """Atoms of independent positions: ``count`` copies of each experiment (docs/theory.md §2.3).

    Parameters
    ----------
    groups : iterable of (PositionExperiment, int)
        Each experiment with the number of attacked positions that follow it.

    Returns
    -------
    Atoms
        The product experiment grouped by likelihood ratio. Two outcomes are
        merged only when their ratios are exactly equal: class ratios equal or
        reciprocal as rationals (for instance ``z = x`` and ``z = x'`` of the
        symmetric uniform kernel, which makes its atoms depend on ``b - a``
        only), or classes of ratio 1.
    """
    groups = [(exp, check_int("count", n, minimum=0)) for exp, n in groups]
    bases: list[tuple[Fraction, float]] = []  # (exact ratio, log ratio) of each distinct base
    classes = []  # per group: (kind, base index, sign, log p, log q) of each non-null class
    for exp, _ in groups:
        rows = []
        for p, q in zip(exp.p_clean, exp.p_adv):
            if p == 0 and q == 0:
                continue
            lp, lq = _log(p), _log(q)
            if q == 0:
                rows.append((_ZERO, -1, 0, lp, lq))
            elif p == 0:
                rows.append((_INF, -1, 0, lp, lq))
            elif p == q:
                rows.append((_FINITE, -1, 0, lp, lq))
            else:
                rows.append((_FINITE, *_base_of(Fraction(q) / Fraction(p), lq - lp, bases), lp, lq))
        classes.append(rows)

    n_bases = len(bases)
    # Start from the single atom of "no position attacked". ``err`` bounds the absolute error of
    # the log masses of each row, propagated through every operation below.
    acc = (np.array([_FINITE]), np.zeros((1, n_bases), dtype=np.int64), np.zeros(1), np.zeros(1),
           np.zeros(1))
    for (_, n), rows in zip(groups, classes):
        if n:
            acc = _combine(*acc, *_power(rows, n, n_bases))
    kind, expo, logp, logq, err = acc
    log_base = np.array([lb for _, lb in bases])
    log_ratio = np.where(kind == _ZERO, -np.inf, np.where(kind == _INF, np.inf, 0.0))
    finite = kind == _FINITE
    ratio_err = np.zeros(kind.size)
    if n_bases:
        log_ratio[finite] = expo[finite] @ log_base
        # Each base log ratio is log q - log p of rounded class masses (<= 2 ulps each).
        base_err = _EPS * (2 * np.abs(log_base) + 8)
        ratio_err[finite] = np.abs(expo[finite]) @ base_err + 2 * _EPS * np.abs(log_ratio[finite])
    # Relative error of exp(log mass) and of the ratio, per atom.
    rel = err + ratio_err + _EPS * (np.abs(_finite_or0(logp)) + np.abs(_finite_or0(logq)) + 4)
    return Atoms(log_ratio, logp, logq, rel_error=float(rel.max()))


def _finite_or0(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


def _base_of(ratio: Fraction, log_ratio: float, bases: list) -> tuple[int, int]:
    for i, (b, _) in enumerate(bases):
        if ratio == b:
            return i, 1
        if ratio * b == 1:
            return i, -1
    bases.append((ratio, log_ratio))
    return len(bases) - 1, 1


def _power(rows, n: int, n_bases: int):
    """Atoms of ``n`` independent copies of one experiment, grouped by ratio."""
    kinds = np.array([r[0] for r in rows])
    lp = np.array([r[3] for r in rows])
    lq = np.array([r[4] for r in rows])
    unit = np.zeros((len(rows), n_bases), dtype=np.int64)
    for j, r in enumerate(rows):
        if r[1] >= 0:
            unit[j, r[1]] = r[2]
    counts = _compositions(n, len(rows))  # (N, J): how many positions fall in each class
    log_fact = gammaln(counts + 1.0)
    log_multinomial = gammaln(n + 1.0) - log_fact.sum(axis=1)
    logp = log_multinomial + _xlog(counts, lp)
    logq = log_multinomial + _xlog(counts, lq)
    # Rounding of gammaln, log, products and sums (a few ulps of each term's magnitude), plus
    # the class masses themselves (rounded to <= 2 ulps from beta and V).
    magnitude = gammaln(n + 1.0) + log_fact.sum(axis=1) + np.maximum(
        np.abs(_xlog(counts, _finite_or0(lp), absolute=True)),
        np.abs(_xlog(counts, _finite_or0(lq), absolute=True)))
    err = _EPS * (4 * magnitude + 2 * n + 4)
    has_zero = (counts[:, kinds == _ZERO] > 0).any(axis=1)
    has_inf = (counts[:, kinds == _INF] > 0).any(axis=1)
    kind = np.where(has_zero, _ZERO, np.where(has_inf, _INF, _FINITE))
    expo = counts @ unit
    keep = ~(has_zero & has_inf)  # impossible under both inputs
    return _group(kind[keep], expo[keep], logp[keep], logq[keep], err[keep])


def _combine(k1, e1, p1, q1, r1, k2, e2, p2, q2, r2):
    """Product of two independent atom lists, regrouped by ratio."""
    k1, k2 = k1[:, None], k2[None, :]
    kind = np.where((k1 == _ZERO) | (k2 == _ZERO), _ZERO,
                    np.where((k1 == _INF) | (k2 == _INF), _INF, _FINITE))
    impossible = ((k1 == _ZERO) & (k2 == _INF)) | ((k1 == _INF) & (k2 == _ZERO))
    expo = e1[:, None, :] + e2[None, :, :]
    keep = ~impossible.ravel()
    logp = p1[:, None] + p2[None, :]
    logq = q1[:, None] + q2[None, :]
    err = r1[:, None] + r2[None, :] + _EPS * np.maximum(
        np.abs(_finite_or0(logp)), np.abs(_finite_or0(logq)))
    return _group(kind.ravel()[keep], expo.reshape(kind.size, e1.shape[1])[keep],
                  logp.ravel()[keep], logq.ravel()[keep], err.ravel()[keep])


def _group(kind, expo, logp, logq, err):
    """Merge outcomes of exactly equal ratio (same kind and exponents; ratio 0 or inf pooled)."""
    expo = np.where((kind == _FINITE)[:, None], expo, 0)
    keys = np.column_stack([kind, expo])
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n = len(uniq)
    # A sum of N positive terms is within N ulps; its log within N ulps absolute more.
    members = np.bincount(inverse, minlength=n)
    worst = np.zeros(n)
    np.maximum.at(worst, inverse, err)
    err_out = worst + _EPS * (members + 2)
    return (uniq[:, 0], uniq[:, 1:], _logsumexp_by(logp, inverse, n),
            _logsumexp_by(logq, inverse, n), err_out)


def _logsumexp_by(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """``log(sum(exp(values)))`` within each group, stable for values far below -745."""
    order = np.argsort(groups, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(groups[order])) + 1]
    peak = np.maximum.reduceat(values[order], starts)
    shift = np.where(np.isfinite(peak), peak, 0.0)
    total = np.bincount(groups, weights=np.exp(values - shift[groups]), minlength=n_groups)
    with np.errstate(divide="ignore"):
        return np.log(total) + shift


@cache
def _compositions(n: int, parts: int) -> np.ndarray:
    """All non-negative integer vectors of length ``parts`` summing to ``n``."""
    if parts == 1:
        return np.array([[n]], dtype=np.int64)
    blocks = []
    for first in range(n + 1):
        rest = _compositions(n - first, parts - 1)
        blocks.append(np.column_stack([np.full(len(rest), first), rest]))
    out = np.concatenate(blocks)
    out.setflags(write=False)
    return out


def _xlog(counts: np.ndarray, logs: np.ndarray, absolute: bool = False) -> np.ndarray:
    """``sum_j counts_j * logs_j`` with ``0 * log 0 = 0`` (of ``|logs_j|`` if ``absolute``)."""
    logs = np.abs(logs) if absolute else logs
    terms = np.where(counts == 0, 0.0, counts * np.where(np.isfinite(logs), logs, 0.0))
    terms = np.where((counts > 0) & ~np.isfinite(logs), -np.inf, terms)
    return terms.sum(axis=1)


def _log(x: float) -> float:
    return float(np.log(x)) if x > 0 else -np.inf


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
