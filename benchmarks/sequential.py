"""Model calls per example: fixed n = 10,000 vs our sequential rule vs Voracek (2024), side by side.

    python benchmarks/sequential.py [--examples 400] [--quick]

Populations (all under the demo's certificate: threshold rule, tau = 0.05,
sigma = 0.5, uniform token substitution beta = 0.25 over the demo vocabulary,
L0 threat on its 10 tokens (the kernel's whole vocabulary is the symbol
space, so the attacker writes symbols of it), alpha = 0.001):

- ``uniform``: analytic classifiers whose smoothed probability is known in
  closed form, spread uniformly from p = tau to p = 1. Such a classifier is a
  half-space on the continuous part, ``f(x) = 1[w.x <= b]`` with ``|w| = 1``:
  under Gaussian noise its output is Bernoulli(p) with
  ``p = Phi((b - w.x) / sigma)``, independently per sample, so its count
  process is simulated exactly (binomial increments between looks).
- ``probit``: the same, with ``Phi^-1(p)`` uniform from ``Phi^-1(tau)`` to
  ``Phi^-1(1 - 1e-6)``: many examples near p = 1, as for a real guard.
- ``demo``: the bundled demo model's own probabilities, estimated by the
  engine with n = 10,000 per test example; the arms then sample
  Bernoulli(p-hat). The ``engine`` rows run our rule for real: the engine
  certifies every demo test example with ``sampling="sequential"`` and the
  target, and counts the model calls it made.

Arms: ``fixed`` (Clopper-Pearson at n = 10,000), ``ours`` (union of
Clopper-Pearson bounds over looks 4, 8, ..., 65,536, 100,000, targets dropped with
the upper sequence, ``hybridcert.sequential``) and ``voracek``: Voracek
(2024)'s confidence sequence, re-implemented from the paper's description, a
plug-in likelihood-ratio test martingale against each threshold (predictable
Krichevsky-Trofimov estimate ``(A + 1/2) / (N + 1)``), checked after every
sample, deciding "certified" or "not certified" when it exceeds ``2 / alpha``
on the corresponding side (Ville's inequality), up to n_max = 100,000.

Questions: single targets (d <= 2, r in {0.25, 0.5, 1.0}), the whole report
grid at once (every d <= d_max, r in {0, .25, .5, 1, 1.5, 2, 3} sigma) and
frontier mode (rtol 2%). The whole grid is also run with n_max = 20,000
("ours 20k"). Targets (issue 13): single targets, geometric mean
over the 9 points of fixed / median calls >= 10x with certified share at most
1 point below fixed's at every point; whole grid >= 2x with the same share
condition; frontier mode reports calls and the radius given up.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import ndtr, ndtri

from hybridcert.certificate.frontier import certified_frontier
from hybridcert.noise import attack_atoms
from hybridcert.sequential import (
    CERTIFIED,
    UnionClopperPearson,
    certification_thresholds,
    frontier_converged,
    look_schedule,
    run_targets,
)
from hybridcert.stats import clopper_pearson_lower

ALPHA, TAU, SIGMA, N_FIXED, N_MAX = 0.001, 0.05, 0.5, 10_000, 100_000
SINGLE_RADII = (0.25, 0.5, 1.0)
GRID_RADII = tuple(SIGMA * f for f in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0))


# --------------------------------------------------------------------------- the arms


def fixed_arm(p, p_star, rng):
    """Certified share per target and calls of fixed n: CP lower bound at N_FIXED."""
    k = rng.binomial(N_FIXED, p)
    lower = np.asarray(clopper_pearson_lower(k, N_FIXED, ALPHA))
    return lower[:, None] >= p_star[None, :], np.full(p.size, N_FIXED), lower


def ours_arm(p, p_star, rng, n_max=N_MAX):
    cs = UnionClopperPearson(look_schedule(n_max), alpha=ALPHA)
    out = run_targets(lambda a, b: rng.binomial(b - a, p), cs, p_star)
    return out.status == CERTIFIED, out.samples


def voracek_arm(p, p_star, rng, chunk: int = 4096):
    """Per-sample plug-in martingale tests against every threshold, alpha / 2 on each side."""
    log_c = np.log(2 / ALPHA)
    certified = np.zeros((p.size, p_star.size), dtype=bool)
    calls = np.zeros(p.size, dtype=np.int64)
    finite = np.isfinite(p_star) & (p_star < 1)
    for i, pi in enumerate(p):
        open_ = finite.copy()
        a = n = 0
        log_q = 0.0
        while open_.any() and n < N_MAX:
            m = min(chunk, N_MAX - n)
            x = rng.random(m) < pi
            ks = a + np.cumsum(x)
            prev = np.r_[a, ks[:-1]]
            t = n + np.arange(1, m + 1)
            q = (prev + 0.5) / t                      # predictable: uses samples before this one
            lq = log_q + np.cumsum(np.where(x, np.log(q), np.log1p(-q)))
            idx = np.flatnonzero(open_)
            ps = p_star[idx][None, :]
            with np.errstate(divide="ignore"):
                ll = ks[:, None] * np.log(ps) + (t - ks)[:, None] * np.log1p(-ps)
            cross = lq[:, None] - ll >= log_c
            up = cross & (ks[:, None] >= ps * t[:, None])
            down = cross & (ks[:, None] <= ps * t[:, None])
            decided = up | down
            first = np.where(decided.any(axis=0), decided.argmax(axis=0), m)
            for col, j in enumerate(idx):
                if first[col] < m:
                    open_[j] = False
                    certified[i, j] = up[first[col], col]
            if not open_.any():
                calls[i] = n + int(first.max()) + 1
                break
            a, n, log_q = int(ks[-1]), n + m, float(lq[-1])
        else:
            calls[i] = n
    return certified, calls


def frontier_arm(p, atoms, rng, rtol=0.02):
    """Frontier mode: stop when n_max cannot raise any r*(d) by more than rtol, or abstain."""
    cs = UnionClopperPearson(look_schedule(N_MAX), alpha=ALPHA)
    k = np.zeros(p.size, dtype=np.int64)
    lower, upper = np.zeros(p.size), np.ones(p.size)
    calls = np.zeros(p.size, dtype=np.int64)
    running = np.ones(p.size, dtype=bool)
    start = 0
    for j, n in enumerate(cs.looks):
        k = np.where(running, k + rng.binomial(n - start, p), k)
        lower = np.where(running, np.maximum(lower, cs.lower(k, j)), lower)
        upper = np.where(running, np.minimum(upper, cs.upper(k, j)), upper)
        calls = np.where(running, n, calls)
        idx = np.flatnonzero(running)
        stop = frontier_converged(lower[idx], upper[idx], cs, sigma=SIGMA, tau=TAU, atoms=atoms,
                                  rtol=rtol)
        running[idx[stop]] = False
        start = n
        if not running.any():
            break
    front = certified_frontier(lower, sigma=SIGMA, tau=TAU, atoms=atoms)
    return front, calls


# --------------------------------------------------------------------------- populations


def populations(examples: int, rng, demo: bool):
    u = (np.arange(examples) + 0.5) / examples
    pops = {"uniform": TAU + (1 - TAU) * u,
            "probit": ndtr(ndtri(TAU) + (ndtri(1 - 1e-6) - ndtri(TAU)) * u)}
    if demo:
        pops["demo"] = demo_probabilities()
    return pops


_DEMO: dict = {}


def demo_model():
    """The demo's smoothed classifier and test split, as `hybridcert certify` builds them."""
    if not _DEMO:
        from hybridcert.config import RunConfig
        from hybridcert.run import plan

        run = plan(RunConfig())  # the default `hybridcert certify` run
        _DEMO["smoothed"], _DEMO["split"] = run.builder(), run.split
    return _DEMO["smoothed"], _DEMO["split"]


def demo_probabilities() -> np.ndarray:
    """p-hat of the demo model on its 360 test examples, by the engine at n = 10,000."""
    smoothed, split = demo_model()
    p = np.empty(len(split))
    for i in range(len(split)):
        cert = smoothed.certify(split.x_discrete[i], split.x_continuous[i], n=N_FIXED,
                                alpha=ALPHA, random_state=i)
        p[i] = cert.count[0] / cert.n[0]
    return p


def demo_engine(targets, n_max=N_MAX):
    """Our rule run for real by the engine on the demo model: certified per target, calls."""
    smoothed, split = demo_model()
    certified, calls = [], []
    for i in range(len(split)):
        cert = smoothed.certify(split.x_discrete[i], split.x_continuous[i], alpha=ALPHA,
                                sampling="sequential", targets=targets, n_max=n_max,
                                random_state=10_000 + i)
        certified.append([cert.decisions[(d, float(r))] == "certified" for d, r in targets])
        calls.append(cert.model_calls)
    return np.array(certified), np.array(calls)


def demo_spec() -> dict:
    """The attack specification the engine records for a demo example (10 tokens, L0)."""
    from hybridcert.datasets import load_dataset
    from hybridcert.noise import UniformSubstitution

    data = load_dataset("mm-interaction", seed=0)
    kernel = UniformSubstitution(beta=0.25, vocab_size=data.vocab_size)
    tokens = np.asarray(data.test.x_discrete[0])
    return kernel.attack_spec(tokens, np.ones(tokens.size, dtype=bool))


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--no-demo", action="store_true", help="skip the demo model population")
    parser.add_argument("--no-voracek", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spec = demo_spec()
    d_max = 8
    atoms = [attack_atoms(spec, d) for d in range(d_max + 1)]
    grid = certification_thresholds(GRID_RADII, d_max=d_max, sigma=SIGMA, tau=TAU, atoms=atoms)
    single = certification_thresholds(SINGLE_RADII, d_max=2, sigma=SIGMA, tau=TAU, atoms=atoms)
    print(f"alpha={ALPHA}, tau={TAU}, sigma={SIGMA}, fixed n={N_FIXED}, n_max={N_MAX}, "
          f"looks={list(look_schedule(N_MAX))}, kernel={spec}")
    for name, p in populations(args.examples, rng, not args.no_demo).items():
        start = time.perf_counter()
        print(flush=True)
        print(f"== population {name}: {p.size} examples, p in [{p.min():.4g}, {p.max():.4g}], "
              f"median p {np.median(p):.4g}")
        header = (f"{'question':<16}{'arm':<9}{'median calls':>13}{'mean calls':>11}"
                  f"{'fixed/median':>13}{'cert share':>11}{'vs fixed':>9}")
        print(header)
        print("-" * len(header))
        ratios = {"ours": [], "voracek": []}
        deficits = {"ours": [], "voracek": []}
        arms = ("ours",) if args.no_voracek else ("ours", "voracek")
        for d in range(3):
            for j, r in enumerate(SINGLE_RADII):
                p_star = single[d, j:j + 1]
                fixed_cert, _, _ = fixed_arm(p, p_star, rng)
                base = fixed_cert.mean()
                print(f"{f'd={d} r={r}':<16}{'fixed':<9}{N_FIXED:>13}{N_FIXED:>11}{1.0:>13.1f}"
                      f"{base:>11.3f}{'':>9}")
                for arm in (*arms, "engine") if name == "demo" else arms:
                    fn = {"ours": ours_arm, "voracek": voracek_arm,
                          "engine": lambda *a, d=d, r=r: demo_engine([(d, r)])}[arm]
                    cert, calls = fn(p, p_star, rng)
                    med = float(np.median(calls))
                    ratios.setdefault(arm, []).append(N_FIXED / med)
                    deficits.setdefault(arm, []).append(base - cert.mean())
                    print(f"{'':<16}{arm:<9}{med:>13.0f}{calls.mean():>11.0f}"
                          f"{N_FIXED / med:>13.1f}{cert.mean():>11.3f}"
                          f"{cert.mean() - base:>+9.3f}")
        for arm in ratios:
            print(f"single targets, {arm}: geometric mean of fixed/median = "
                  f"{np.exp(np.mean(np.log(ratios[arm]))):.1f}x (target >= 10x); worst share "
                  f"loss {max(deficits[arm]) * 100:.2f} points (target <= 1)")
        p_star = grid.ravel()
        fixed_cert, _, fixed_lower = fixed_arm(p, p_star, rng)
        print(f"{'whole grid':<16}{'fixed':<9}{N_FIXED:>13}{N_FIXED:>11}{1.0:>13.1f}"
              f"{fixed_cert.mean():>11.3f}{'':>9}")
        for arm in (*arms, "ours 20k"):
            fn = {"ours": ours_arm, "voracek": voracek_arm,
                  "ours 20k": lambda *a: ours_arm(*a, n_max=20_000)}[arm]
            cert, calls = fn(p, p_star, rng)
            med = float(np.median(calls))
            worst = (fixed_cert.mean(axis=0) - cert.mean(axis=0)).max()
            print(f"{'':<16}{arm:<9}{med:>13.0f}{calls.mean():>11.0f}{N_FIXED / med:>13.1f}"
                  f"{cert.mean():>11.3f}{cert.mean() - fixed_cert.mean():>+9.3f}"
                  f"  (worst grid point {-worst * 100:+.2f} points)")
            if arm == "ours":
                # Where the calls go: examples whose p lies within 3 fixed-n standard errors
                # of some target's threshold (the ones fixed n decides by a coin flip).
                se = np.sqrt(p * (1 - p) / N_FIXED)
                near = (np.abs(p[:, None] - p_star[None, :]) < 3 * se[:, None] + 1e-4).any(1)
                print(f"{'':<25}cost: {near.mean():.0%} of the examples lie within 3 standard "
                      f"errors of a threshold and take {calls[near].sum() / calls.sum():.0%} of "
                      f"the calls (median {np.median(calls[near]) if near.any() else 0:.0f}; "
                      f"others: median {np.median(calls[~near]) if (~near).any() else 0:.0f})")
        front, calls = frontier_arm(p, atoms, rng)
        fixed_front = certified_frontier(fixed_lower, sigma=SIGMA, tau=TAU, atoms=atoms)
        fr, sr = fixed_front.radii, front.radii
        both = (fr > 0) & (sr > 0)
        given_up = np.where(both, (fr - sr) / np.where(both, fr, 1), 0.0)
        abstain_f = (np.asarray(fixed_front.largest_budget) < 0).mean()
        abstain_s = (np.asarray(front.largest_budget) < 0).mean()
        print(f"{'frontier 2%':<16}{'ours':<9}{np.median(calls):>13.0f}{calls.mean():>11.0f}"
              f"{N_FIXED / np.median(calls):>13.1f}   abstain {abstain_s:.3f} (fixed "
              f"{abstain_f:.3f}); radius vs fixed: median {np.median(given_up[both]) * 100:+.2f}% "
              f"given up, mean r*(0) {sr[:, 0].mean():.3f} vs {fr[:, 0].mean():.3f}")
        print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
