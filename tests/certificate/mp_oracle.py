"""High-precision reference certificates in mpmath, written independently of the package.

Atoms come from plain enumeration of outcome-class counts (no merging of equal
ratios, which the Neyman-Pearson fill does not need), and every root is found
by bracketing bisection/Anderson at ``DPS`` digits. Slow, simple, exact.
"""

from __future__ import annotations

import itertools

import mpmath as mp

DPS = 50


@mp.workdps(DPS)
def experiment_atoms(groups):
    """``[(p, q)]`` of the product of ``count`` copies of each ``(P, Q)`` class-mass pair."""
    atoms = [(mp.mpf(1), mp.mpf(1))]
    for (P, Q), n in groups:
        P = [mp.mpf(x) for x in P]
        Q = [mp.mpf(x) for x in Q]
        J = len(P)
        single = []
        for counts in itertools.product(range(n + 1), repeat=J):
            if sum(counts) != n:
                continue
            coeff = mp.factorial(n)
            p = q = mp.mpf(1)
            for c, pj, qj in zip(counts, P, Q):
                coeff /= mp.factorial(c)
                p *= pj**c
                q *= qj**c
            single.append((coeff * p, coeff * q))
        atoms = [(p1 * p2, q1 * q2) for p1, q1 in atoms for p2, q2 in single]
    return [(p, q) for p, q in atoms if p > 0 or q > 0]


@mp.workdps(DPS)
def uniform_classes(beta, V):
    beta = mp.mpf(beta)
    keep = 1 - beta
    s = beta / (V - 1)
    o = beta * (V - 2) / (V - 1)
    return (keep, s, o), (s, keep, o)


@mp.workdps(DPS)
def uniform_atoms_by_k(d, beta, V):
    """docs/theory.md §2.1 verbatim: ``{k: (p_clean(k), p_adv(k))}``, summing over ``b - a = k``."""
    keep, s, o = uniform_classes(beta, V)[0]
    out = {}
    for a in range(d + 1):
        for b in range(d + 1 - a):
            c = d - a - b
            coef = mp.factorial(d) / (mp.factorial(a) * mp.factorial(b) * mp.factorial(c))
            p = coef * keep**a * s**b * o**c
            q = coef * s**a * keep**b * o**c
            pp, qq = out.get(b - a, (0, 0))
            out[b - a] = (pp + p, qq + q)
    return out


def uniform_atoms(d, beta, V):
    return [(p, q) for p, q in uniform_atoms_by_k(d, beta, V).values() if p > 0 or q > 0]


@mp.workdps(DPS)
def absorbing_atoms(d, beta):
    """docs/theory.md §2.2 verbatim."""
    beta = mp.mpf(beta)
    if d == 0:
        return [(mp.mpf(1), mp.mpf(1))]
    reveal = 1 - beta**d
    atoms = [(reveal, mp.mpf(0)), (mp.mpf(0), reveal), (beta**d, beta**d)]
    return [(p, q) for p, q in atoms if p > 0 or q > 0]


def _sorted(atoms):
    def key(a):
        p, q = a
        if p == 0:
            return (2, 0)
        if q == 0:
            return (0, 0)
        return (1, q / p)

    return sorted(atoms, key=key)


@mp.workdps(DPS)
def discrete_bound(m, atoms):
    """Knapsack: fill clean mass ``m`` from the lowest ratio up; return the adversarial mass."""
    m = mp.mpf(m)
    v = mp.mpf(0)
    for p, q in _sorted(atoms):
        if p == 0:
            break
        take = min(p, m)
        v += q * take / p
        m -= take
        if m <= 0:
            break
    return v


def _split(atoms):
    p0 = sum((p for p, q in atoms if q == 0 and p > 0), mp.mpf(0))
    fin = [(p, q, mp.log(q) - mp.log(p)) for p, q in atoms if p > 0 and q > 0]
    return p0, fin


def _clean(lam, a, p0, fin):
    return p0 + mp.fsum(p * mp.ncdf((lam - g) / a + a / 2) for p, q, g in fin)


def _adv(lam, a, fin):
    return mp.fsum(q * mp.ncdf((lam - g) / a - a / 2) for p, q, g in fin)


def _narrow(f, lo, hi, iters):
    """``iters`` bisection steps on the sign change of increasing ``f``; the final bracket."""
    flo = f(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        fm = f(mid)
        if (fm < 0) == (flo < 0):
            lo, flo = mid, fm
        else:
            hi = mid
    return lo, hi


def _bisect(f, lo, hi, iters):
    """Root of increasing ``f`` in ``[lo, hi]``."""
    lo, hi = _narrow(f, lo, hi, iters)
    return (lo + hi) / 2


@mp.workdps(DPS)
def _root(f, lo, hi):
    """Root of increasing ``f`` on ``[lo, hi]``: a few bisections, then Anderson-Bjorck."""
    lo, hi = _narrow(f, lo, hi, 12)
    try:
        x = mp.findroot(f, (lo, hi), solver="anderson", tol=mp.mpf(10) ** (-DPS + 8))
        if lo <= x <= hi:
            return x
    except (ValueError, ZeroDivisionError):
        pass
    return _bisect(f, lo, hi, 4 * DPS)


@mp.workdps(DPS)
def threshold_lambda(m, a, p0, fin):
    m = mp.mpf(m)
    gs = [g for _, _, g in fin]
    lo = min(gs) - 60 * a - 10
    hi = max(gs) + 60 * a + 10
    f = lambda lam: _clean(lam, a, p0, fin) - m  # noqa: E731
    try:
        return mp.findroot(f, (lo, hi), solver="anderson", tol=mp.mpf(10) ** (-2 * DPS // 2 - 5))
    except (ValueError, ZeroDivisionError):
        return _bisect(f, lo, hi, 3 * DPS + 40)


def worst_case_probability(m, a, atoms):
    """``V(a)`` for clean mass ``m`` at scaled radius ``a = r / sigma``."""
    with mp.workdps(DPS):
        m, a = mp.mpf(m), mp.mpf(a)
        if a == 0:
            return discrete_bound(m, atoms)
        p0, fin = _split(atoms)
        if m <= p0:
            return mp.mpf(0)
        if m >= 1:
            return mp.fsum(q for p, q, g in fin)
        lam = threshold_lambda(m, a, p0, fin)
        return _adv(lam, a, fin)


def certified_scaled_radius(m, tau, atoms):
    """``sup {a : V(a) >= tau}`` (0 when the discrete bound is below ``tau``)."""
    with mp.workdps(DPS):
        m, tau = mp.mpf(m), mp.mpf(tau)
        if m <= tau or discrete_bound(m, atoms) <= tau:
            return mp.mpf(0)
        hi = mp.sqrt(2) * (mp.erfinv(2 * m - 1) - mp.erfinv(2 * tau - 1)) + 1
        f = lambda a: tau - worst_case_probability(m, a, atoms)  # noqa: E731
        lo = mp.mpf(10) ** (-DPS // 2)
        if f(lo) > 0:
            return mp.mpf(0)
        return _root(f, lo, hi)


def multiclass_scaled_radius(pa, pb, atoms):
    with mp.workdps(DPS):
        pa, pb = mp.mpf(pa), mp.mpf(pb)

        def gap(a):
            return (1 - worst_case_probability(1 - pb, a, atoms)) - worst_case_probability(pa, a, atoms)

        if gap(0) >= 0:
            return mp.mpf(0)
        hi = (mp.sqrt(2) * (mp.erfinv(2 * pa - 1) - mp.erfinv(2 * pb - 1))) / 2 + 1
        return _root(gap, mp.mpf(10) ** (-DPS // 2), hi)
