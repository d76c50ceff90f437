"""The certified frontier ``d -> r*(d)`` and the tabular worst case over which fields change."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from .._validation import (
    check_beta,
    check_int,
    check_open_unit,
    check_positive,
    check_probability,
)
from ._numerics import broadcast, prepare
from .atoms import Atoms, categorical_atoms, field_choices
from .hybrid import certified_radius, discrete_certified

__all__ = ["Frontier", "categorical_frontier", "categorical_frontier_by_subsets",
           "certified_frontier"]


@dataclass(frozen=True)
class Frontier:
    """Certified radii for every discrete budget ``d = 0..d_max``.

    Attributes
    ----------
    radii : ndarray, shape ``p_lower.shape + (d_max + 1,)``
        ``radii[..., d]`` is the L2 radius certified against at most ``d``
        discrete changes (0.0 where ``d`` is not certified).
    largest_budget : int, or ndarray of int of shape ``p_lower.shape``
        The largest ``d`` such that every budget ``<= d`` is certified
        (``-1`` where not even ``d = 0`` is, i.e. ``p_lower <= tau``).
    """

    radii: np.ndarray
    largest_budget: np.ndarray | int

    @property
    def d_max(self) -> int:
        return self.radii.shape[-1] - 1


def certified_frontier(
    p_lower: ArrayLike,
    *,
    sigma: float,
    atoms: Sequence[Atoms] | Callable[[int], Atoms],
    d_max: int | None = None,
    tau: float = 0.5,
) -> Frontier:
    """``r*(d)`` for ``d = 0..d_max`` from one lower bound (shared-D, docs/theory.md §2 and §7).

    Parameters
    ----------
    p_lower : array_like, values in [0, 1]
        Lower confidence bound on ``p_A(x)`` under the noise of the largest
        threat region (one estimate certifies every ``d <= d_max``).
    sigma : float > 0
        Gaussian noise level.
    atoms : sequence, or callable ``d -> Atoms``
        The atoms of each budget, ``atoms[d]``; with a callable, ``d_max`` is
        required (for instance ``lambda d: uniform_atoms(d, beta=.25,
        vocab_size=V)``). An entry may also be a list of Atoms, the
        experiments an attacker can choose between at that budget: the radius
        is then the minimum over them.
    d_max : int, optional
        Largest budget; defaults to ``len(atoms) - 1``.
    tau : float in (0, 1)
        Decision threshold.

    Returns
    -------
    Frontier
        The radius of budget ``d`` is the minimum over ``d' <= d`` (an
        attacker may change fewer positions). For product kernels this is
        already ``r*(d)``: an unchanged position is a garbling of a changed
        one, so ``r*`` is non-increasing in ``d``; taking the minimum keeps the
        claim "at most ``d``" sound whatever atoms are passed.

    Examples
    --------
    >>> import numpy as np
    >>> from hybridcert import uniform_atoms
    >>> front = certified_frontier(0.999, sigma=0.5, tau=4.6e-5, d_max=8,
    ...                            atoms=lambda d: uniform_atoms(d, beta=0.25, vocab_size=32000))
    >>> np.round(front.radii, 3).tolist(), int(front.largest_budget)
    ([3.501, 3.109, 2.665, 2.141, 1.463, 0.0, 0.0, 0.0, 0.0], 4)
    """
    if callable(atoms):
        if d_max is None:
            raise ValueError("d_max is required when atoms is a callable")
        d_max = check_int("d_max", d_max, minimum=0)
        table = [atoms(d) for d in range(d_max + 1)]
    else:
        table = list(atoms)
        if not table:
            raise ValueError("atoms must hold the atoms of at least d = 0")
        d_max = len(table) - 1 if d_max is None else check_int("d_max", d_max, minimum=0)
        if d_max >= len(table):
            raise ValueError(f"d_max must be < len(atoms) = {len(table)}, got {d_max}")
        table = table[: d_max + 1]
    return _frontier(p_lower, sigma, tau, [list(a) if isinstance(a, (list, tuple)) else [a]
                                           for a in table])


def categorical_frontier(
    p_lower: ArrayLike, *, sigma: float, arities: Sequence[int], beta: float,
    d_max: int | None = None, tau: float = 0.5,
) -> Frontier:
    """Frontier for tabular data: the attacker also picks WHICH ``d`` fields to change.

    Each categorical field ``i`` is noised by uniform substitution over its
    ``V_i`` categories. For budget ``d`` the radius is the minimum of
    ``certified_radius`` over every multiset of ``d`` arities the table offers
    (:func:`~hybridcert.certificate.atoms.field_choices`): exact, and cheap
    because fields of equal arity are interchangeable.

    No shortcut such as "the ``d`` largest arities are the worst" is used: it
    is false. Per field, a larger arity makes substitution reveal more when
    ``beta`` is small but less when ``beta`` is large (at ``beta = 1`` a binary
    field is flipped deterministically and reveals everything, a field of 3
    categories only half the time); ``tests/certificate/test_frontier.py``
    shows a table where the smallest arity is the worst.

    Parameters
    ----------
    arities : sequence of int >= 2
        Number of categories of every categorical field of the table.
    beta : float in (0, 1]
        Substitution probability (the same for every field).
    d_max : int, optional
        Largest budget; defaults to the number of fields.
    """
    arities, beta, d_max = _check_fields(arities, beta, d_max)
    choices = [[_categorical(c, beta) for c in field_choices(arities, d)] for d in range(d_max + 1)]
    return _frontier(p_lower, sigma, tau, choices)


def categorical_frontier_by_subsets(
    p_lower: ArrayLike, *, sigma: float, arities: Sequence[int], beta: float,
    d_max: int | None = None, tau: float = 0.5,
) -> Frontier:
    """Reference for :func:`categorical_frontier`: the brute force over field subsets.

    For budget ``d`` every one of the ``C(len(arities), d)`` subsets of fields is enumerated,
    its atoms are built afresh, and the radius is the minimum over subsets (what the paper's
    code does). Same parameters and result as :func:`categorical_frontier`, which enumerates
    multisets of arities instead and reuses atoms across calls; this function exists to check
    that reduction and to measure what it saves.
    """
    arities, beta, d_max = _check_fields(arities, beta, d_max)
    subsets = sum(math.comb(len(arities), d) for d in range(d_max + 1))
    if subsets > 100_000:
        raise ValueError(f"the brute force would enumerate {subsets} field subsets; lower d_max "
                         "(categorical_frontier computes the same certificate without it)")
    choices = [[categorical_atoms([arities[i] for i in subset], beta=beta)
                for subset in itertools.combinations(range(len(arities)), d)]
               for d in range(d_max + 1)]
    return _frontier(p_lower, sigma, tau, choices)


def _check_fields(arities, beta, d_max) -> tuple[list[int], float, int]:
    arities = [check_int("arities", a, minimum=2) for a in arities]
    if not arities:
        raise ValueError("arities must name at least one field")
    beta = check_beta(beta)
    d_max = len(arities) if d_max is None else check_int("d_max", d_max, minimum=0)
    if d_max > len(arities):
        raise ValueError(f"d_max must be <= the number of fields ({len(arities)}), got {d_max}")
    return arities, beta, d_max


@lru_cache(maxsize=4096)
def _categorical(arities: tuple[int, ...], beta: float) -> Atoms:
    return categorical_atoms(arities, beta=beta)


def _frontier(p_lower, sigma, tau, choices_per_d: list[list[Atoms]]) -> Frontier:
    p = check_probability("p_lower", p_lower)
    s = check_positive("sigma", sigma)
    t = check_open_unit("tau", tau)
    shape, (p, s, t) = broadcast(p, s, t)
    n_d = len(choices_per_d)
    radii = np.empty((p.size, n_d))
    certified = np.empty((p.size, n_d), dtype=bool)
    for d, choices in enumerate(choices_per_d):
        radii[:, d] = np.min([certified_radius(p, sigma=s, atoms=a, tau=t) for a in choices], axis=0)
        certified[:, d] = np.all([discrete_certified(prepare(a), p, t) for a in choices], axis=0)
    radii = np.minimum.accumulate(radii, axis=1)
    certified = np.logical_and.accumulate(certified, axis=1)
    radii = np.where(certified, radii, 0.0)
    largest = certified.sum(axis=1) - 1
    largest = largest.reshape(shape)
    return Frontier(radii=radii.reshape((*shape, n_d)),
                    largest_budget=int(largest) if largest.ndim == 0 else largest)
