"""Time per certified radius: batch, scalar, and a naive nested-bisection baseline.

    python benchmarks/certificates.py            # full table (about a minute)
    python benchmarks/certificates.py --quick    # fewer repetitions

Targets (issue 3): amortised <= 0.26 ms per radius in a batch of 10,000 lower
bounds, <= 2.6 ms per scalar call. The baseline solves the same equations
with textbook nested bisection in float64 (outer bisection on r, inner
bisection on the threshold), as published solvers do; its deviation from our
proved radius is shown too.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import ndtr, ndtri

import hybridcert as hc

TAU = 4.6e-5
SIGMA = 0.5
BATCH_TARGET_MS = 0.26
SCALAR_TARGET_MS = 2.6


def naive_radius(p: float, atoms: hc.Atoms, tau: float, sigma: float) -> float:
    """Nested bisection on V(r) = tau, no error control (the baseline)."""
    pc, qc, ratio = atoms
    keep = (pc > 0) & (qc > 0)
    g, pf, qf = np.log(ratio[keep]), pc[keep], qc[keep]
    p0 = pc[qc == 0].sum()

    def adv(a: float) -> float:
        lo, hi = g.min() - 60 * a - 10, g.max() + 60 * a + 10
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if p0 + np.dot(pf, ndtr((mid - g) / a + a / 2)) < p:
                lo = mid
            else:
                hi = mid
        return float(np.dot(qf, ndtr((0.5 * (lo + hi) - g) / a - a / 2)))

    lo, hi = 0.0, max(ndtri(p) - ndtri(tau), 0.0)
    if hi == 0.0 or hc.discrete_bound(p, atoms) < tau:
        return 0.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if adv(max(mid, 1e-12)) >= tau:
            lo = mid
        else:
            hi = mid
    return sigma * lo


def kernels():
    yield "uniform V=50257 b=0.25", lambda d: hc.uniform_atoms(d, beta=0.25, vocab_size=50257)
    yield "uniform V=2 b=0.3", lambda d: hc.uniform_atoms(d, beta=0.3, vocab_size=2)
    yield "absorbing b=0.5", lambda d: hc.absorbing_atoms(d, beta=0.5)
    yield "categorical 2,3,7,16 b=.25", \
        lambda d: hc.categorical_atoms([2, 3, 7, 16][:d] if d <= 4 else [2, 3, 7, 16] * (d // 4),
                                       beta=0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    p_batch = 1 - 10 ** rng.uniform(-12, -0.3, args.batch)
    n_scalar = 50 if args.quick else 200
    n_naive = 3 if args.quick else 10
    budgets = (1, 4, 8, 16, 32)

    header = (f"{'kernel':<28}{'d':>3}{'atoms':>7}{'cert.':>7}{'batch ms/r':>12}{'scalar ms':>11}"
              f"{'naive ms/r':>12}{'speed-up':>10}{'naive dev':>11}")
    print(f"tau={TAU}, sigma={SIGMA}, batch of {args.batch} lower bounds\n")
    print(header)
    print("-" * len(header))
    worst_batch = worst_scalar = 0.0
    for name, make in kernels():
        for d in budgets:
            if name.startswith("categorical") and d not in (1, 4, 8):
                continue
            atoms = make(d)
            hc.certified_radius(0.9, sigma=SIGMA, atoms=atoms, tau=TAU)  # warm caches
            t0 = time.perf_counter()
            radii = hc.certified_radius(p_batch, sigma=SIGMA, atoms=atoms, tau=TAU)
            batch_ms = (time.perf_counter() - t0) * 1e3 / args.batch
            scalars = p_batch[radii > 0][:n_scalar] if (radii > 0).any() else p_batch[:n_scalar]
            t0 = time.perf_counter()
            for p in scalars:
                hc.certified_radius(float(p), sigma=SIGMA, atoms=atoms, tau=TAU)
            scalar_ms = (time.perf_counter() - t0) * 1e3 / len(scalars)
            naive_p = scalars[:n_naive]
            t0 = time.perf_counter()
            naive = [naive_radius(float(p), atoms, TAU, SIGMA) for p in naive_p]
            naive_ms = (time.perf_counter() - t0) * 1e3 / len(naive_p)
            ours = hc.certified_radius(naive_p, sigma=SIGMA, atoms=atoms, tau=TAU)
            dev = np.max(np.abs(np.array(naive) - ours) / np.maximum(ours, 1e-300)) \
                if (ours > 0).any() else 0.0
            worst_batch = max(worst_batch, batch_ms)
            worst_scalar = max(worst_scalar, scalar_ms)
            print(f"{name:<28}{d:>3}{len(atoms):>7}{np.mean(radii > 0):>7.0%}{batch_ms:>12.4f}"
                  f"{scalar_ms:>11.3f}{naive_ms:>12.1f}{naive_ms / scalar_ms:>10.0f}x"
                  f"{dev:>11.1e}")
    print()
    print(f"worst batch time per radius: {worst_batch:.4f} ms "
          f"(target <= {BATCH_TARGET_MS}) {'PASS' if worst_batch <= BATCH_TARGET_MS else 'FAIL'}")
    print(f"worst scalar call:           {worst_scalar:.3f} ms "
          f"(target <= {SCALAR_TARGET_MS}) {'PASS' if worst_scalar <= SCALAR_TARGET_MS else 'FAIL'}")


if __name__ == "__main__":
    main()
