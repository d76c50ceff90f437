"""Floating-point error model shared by the certificates (docs/theory.md §6).

Every certificate here is computed twice over: a fast approximate solve, then
a *rigorous* check that only uses quantities bounded in the safe direction.
The bounds rest on three facts, each tested against ``mpmath`` in
``tests/certificate/test_numerics.py``:

1. ``scipy.special.ndtr(z)`` has relative error below ``PHI_RTOL(z) =
   eps * (32 + 2 * min(z**2, 1600))`` where ``Phi(z) > 1e-300`` (the error
   grows like ``z**2`` in the left tail because ``exp(-z**2/2)`` amplifies
   the rounding of ``z**2``);
2. ``scipy.special.ndtri`` is accurate to a few ulps (``NDTRI_RTOL``);
3. the masses and log-ratios of :class:`~hybridcert.certificate.atoms.Atoms`
   are accurate to ``atoms.rel_error`` relative (a bound computed with the
   atoms from the magnitudes involved), and a mass that underflowed in
   linear space is below ``ATOM_ATOL``.

Given (3), the exact atoms and the computed ones ``(p_hat, g_hat)`` are two
experiments whose masses differ by a factor ``1 +- e`` atom by atom. Any test
with clean mass ``>= m`` under the exact atoms has clean mass
``>= m / (1 + e)`` under the computed ones, and its adversarial mass is at
least ``(1 - e)`` times the computed one; so the computed experiment's
Neyman-Pearson value at the relaxed target, shrunk by ``1 - e``, bounds the
exact value from below. ``rel_up`` and ``rel_down`` carry ``3 e`` (the
adversarial masses are used directly rather than as ``p_hat exp(g_hat)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from .atoms import Atoms

EPS = float(np.finfo(float).eps)
ATOM_ATOL = 1e-300
NDTRI_RTOL = 8 * EPS
SQRT_2PI = float(np.sqrt(2 * np.pi))


def phi_rtol(z: np.ndarray) -> np.ndarray:
    """Bound on the relative error of ``scipy.special.ndtr`` at ``z``."""
    return EPS * (32.0 + 2.0 * np.minimum(z * z, 1600.0))


def phi_upper(z: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """An upper bound on ``Phi(x)`` for every ``x`` in ``[z - dz, z + dz]``."""
    w = z + dz
    return ndtr(w) * (1.0 + phi_rtol(w)) + ATOM_ATOL


def phi_lower(z: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """A lower bound on ``Phi(x)`` for every ``x`` in ``[z - dz, z + dz]``."""
    w = z - dz
    return ndtr(w) * (1.0 - phi_rtol(w))


def probit(p: np.ndarray, pc: np.ndarray) -> np.ndarray:
    """``Phi^-1(p)`` given ``p`` and its complement ``pc = 1 - p``, accurate in both tails."""
    return np.where(p <= 0.5, ndtri(p), -ndtri(pc))


def complement_down(x: np.ndarray) -> np.ndarray:
    """A float ``<= 1 - x`` (exact for ``x >= 1/2`` by Sterbenz, else one ulp down)."""
    y = 1.0 - x
    return np.where(x >= 0.5, y, np.nextafter(y, -np.inf))


def complement_up(x: np.ndarray) -> np.ndarray:
    """A float ``>= 1 - x``."""
    y = 1.0 - x
    return np.where(x >= 0.5, y, np.nextafter(y, np.inf))


def round_down(x: np.ndarray) -> np.ndarray:
    """One ulp towards 0 for finite positive ``x`` (covers one float operation's rounding)."""
    return np.where(np.isfinite(x) & (x > 0), np.nextafter(x, 0.0), x)


def round_up(x: np.ndarray) -> np.ndarray:
    """One ulp towards ``+inf`` for finite positive ``x`` (0 stays 0: it is exact)."""
    return np.where(np.isfinite(x) & (x > 0), np.nextafter(x, np.inf), x)


def total_variation_upper(a: np.ndarray) -> np.ndarray:
    """Upper bound on ``TV(N(0, 1), N(a, 1)) = 2 Phi(a/2) - 1 <= a / sqrt(2 pi)``.

    Moving the continuous input by ``a * sigma`` changes every smoothed
    probability by at most this, whatever the discrete part: a Lipschitz
    bound that certifies small radii without solving anything.
    """
    return np.minimum(a * (1.0 / SQRT_2PI) * (1 + 8 * EPS), 1.0)


@dataclass(frozen=True)
class Prepared:
    """Atoms split for the certificate: ratio-0 mass, finite atoms, ratio-inf mass."""

    g: np.ndarray        # finite log ratios, ascending
    p: np.ndarray        # their clean masses
    q: np.ndarray        # their adversarial masses
    p_zero: float        # clean mass of ratio-0 atoms (always inside the worst-case region)
    q_inf: float         # adversarial mass of ratio-inf atoms (never inside it)
    g_all: np.ndarray    # all log ratios, ascending (-inf first, +inf last)
    p_all: np.ndarray    # clean masses of all atoms in ratio order (for the knapsack)
    q_all: np.ndarray
    n_atoms: int
    g_mean: float        # clean-weighted mean finite log ratio (a starting point)
    rel_error: float     # relative error bound of the atoms

    @property
    def is_gaussian(self) -> bool:
        """One atom of ratio 1: no discrete change (d = 0)."""
        return self.n_atoms == 1 and self.g.size == 1 and self.g[0] == 0.0

    @property
    def rel_up(self) -> float:
        """Factor covering atom error and summation rounding, upwards."""
        return (1.0 + 3 * self.rel_error) * (1.0 + 2 * (self.n_atoms + 2) * EPS)

    @property
    def rel_down(self) -> float:
        return (1.0 - 3 * self.rel_error) * (1.0 - 2 * (self.n_atoms + 2) * EPS)

    @property
    def margin(self) -> float:
        """Relative margin the proofs need on top of the point values."""
        return 3 * self.rel_error + 2 * (self.n_atoms + 2) * EPS + 1e-15

    @property
    def abs_slack(self) -> float:
        """Mass that underflowed to zero, at most."""
        return (self.n_atoms + 1) * ATOM_ATOL


def prepare(atoms: Atoms) -> Prepared:
    """Split ``atoms`` once; cached on the (immutable) atoms object."""
    if not isinstance(atoms, Atoms):
        raise TypeError("atoms must be an Atoms object (for instance uniform_atoms(d, beta=..., "
                        f"vocab_size=...)), got {type(atoms).__name__}")
    cached = atoms._cache.get("prepared")
    if cached is not None:
        return cached
    lr = atoms.log_ratio
    finite = np.isfinite(lr)
    p, q = atoms.p_clean, atoms.p_adv
    g = lr[finite]
    pf = p[finite]
    g_mean = float(np.dot(pf, g) / pf.sum()) if pf.sum() > 0 else 0.0
    prep = Prepared(
        g=g, p=pf, q=q[finite],
        p_zero=float(p[lr == -np.inf].sum()), q_inf=float(q[lr == np.inf].sum()),
        g_all=lr, p_all=p, q_all=q, n_atoms=len(atoms), g_mean=g_mean, rel_error=atoms.rel_error,
    )
    atoms._cache["prepared"] = prep
    return prep


def lower(x: np.ndarray) -> np.ndarray:
    """A float below the exact value of ``x`` when ``x`` carries up to 3 ulps of error."""
    return x - 4 * EPS * np.abs(x)


def upper(x: np.ndarray) -> np.ndarray:
    return x + 4 * EPS * np.abs(x)


def chunk_rows(n_rows: int, n_atoms: int, budget: int = 1 << 20) -> list[slice]:
    """Row slices such that each chunk holds at most ``budget`` row-by-atom values."""
    step = max(1, budget // max(n_atoms, 1))
    return [slice(s, s + step) for s in range(0, n_rows, step)]


def broadcast(*arrays: np.ndarray) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Broadcast the inputs and flatten them; return the common shape."""
    b = np.broadcast_arrays(*arrays)
    return b[0].shape, [np.ascontiguousarray(x, dtype=float).ravel() for x in b]


def output(values: np.ndarray, shape: tuple[int, ...]):
    """Reshape; a scalar call returns a Python float (scipy.special style)."""
    out = values.reshape(shape)
    return float(out) if out.ndim == 0 else out


def rowdot(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``matrix @ weights`` summed row by row in a fixed order.

    BLAS orders the sum differently for different batch sizes; this keeps a
    batch call bit-identical to scalar calls (all terms are non-negative, so
    the summation error stays within the ``2 K eps`` the proofs allow).
    """
    return (matrix * weights).sum(axis=1)
