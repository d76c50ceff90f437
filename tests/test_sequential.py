"""Anytime-valid sequential statistics: the schedule, the accounting, coverage under adversarial
stopping, target decisions and frontier stopping (hybridcert.sequential)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

import hybridcert as hc
from hybridcert.noise import attack_atoms
from hybridcert.sequential import (
    CERTIFIED,
    DROPPED,
    OPEN,
    UnionClopperPearson,
    certification_thresholds,
    decision_counts,
    frontier_converged,
    look_schedule,
    reachable_thresholds,
    run_targets,
    target_status,
)
from hybridcert.stats import clopper_pearson_lower, clopper_pearson_upper

SPEC = {"kernel": "uniform", "beta": 0.25, "vocab_size": 50, "inside": 10, "outside": 0,
        "attacker_alphabet": "noise"}
RADII = np.array([0.0, 0.25, 0.5, 1.0])


def spec_atoms(d):
    return attack_atoms(SPEC, d)


@pytest.fixture(scope="module")
def thresholds():
    return certification_thresholds(RADII, d_max=2, sigma=0.5, tau=0.05, atoms=spec_atoms)


def test_look_schedule_is_geometric_blocked_and_ends_at_n_max():
    assert len(look_schedule(100_000)) == 30 and look_schedule(100_000)[0] == 4
    looks = look_schedule(100_000, first=16, ratio=2.0, block=16)
    assert looks[0] == 16 and looks[-1] == 100_000
    assert np.all(np.diff(looks) > 0)
    assert np.all(looks[:-1] % 16 == 0)
    assert np.all(looks[1:-1] / looks[:-2] == 2.0)
    assert list(look_schedule(10, first=16)) == [10]
    assert list(look_schedule(40)) == [4, 8, 12, 16, 24, 32, 40]
    assert list(look_schedule(100, first=10, ratio=1.5, block=8)) == [16, 24, 40, 56, 80, 100]
    with pytest.raises(ValueError, match="ratio"):
        look_schedule(100, ratio=1.0)
    with pytest.raises(ValueError, match="n_max"):
        look_schedule(0)


def test_levels_spend_exactly_alpha_over_the_looks():
    cs = UnionClopperPearson(look_schedule(100_000), alpha=0.001)
    assert cs.levels().sum() == pytest.approx(0.001, rel=1e-12)
    assert cs.lower(3, 0) == clopper_pearson_lower(3, cs.looks[0], 0.001 / len(cs.looks))
    with pytest.raises(ValueError, match="increasing"):
        UnionClopperPearson((10, 10), alpha=0.1)
    with pytest.raises(ValueError, match="alpha"):
        UnionClopperPearson((10, 20), alpha=1.5)


def _simulate_counts(p, looks, runs, rng):
    """Exact law of the running count at the looks: independent binomial increments."""
    steps = np.diff(np.r_[0, looks])
    return np.cumsum(rng.binomial(steps, p, size=(runs, steps.size)), axis=1)


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_coverage_under_adversarial_stopping_at_the_decision_boundaries(thresholds, alpha):
    """p sits just below a target's threshold, so every "certified" claim is wrong. The adversary
    stops at the first look where the lower bound crosses (the most favourable stopping time
    for a false claim). The wrong-claim rate must stay <= alpha up to the 99.9% binomial
    quantile."""
    runs = 8_000
    cs = UnionClopperPearson(look_schedule(100_000), alpha=alpha)
    boundaries = np.unique(thresholds[np.isfinite(thresholds)])
    boundaries = np.r_[boundaries[boundaries < 1.0], 1e-4, 0.5, 1 - 1e-5]
    rng = np.random.default_rng(2024)
    limit = binom.ppf(0.999, runs, alpha)
    for p_star in boundaries:
        p = np.nextafter(p_star, 0.0)
        lower = cs.lower_path(_simulate_counts(p, cs.looks, runs, rng))
        wrong = int((lower >= p_star).any(axis=1).sum())
        assert wrong <= limit, (p_star, wrong, limit)


def test_upper_sequence_covers_under_adversarial_stopping():
    runs, alpha = 20_000, 0.1
    cs = UnionClopperPearson(look_schedule(50_000), alpha=0.01, alpha_drop=alpha)
    rng = np.random.default_rng(7)
    for p in (0.05, 0.26, 0.9, 0.999):
        upper = cs.upper_path(_simulate_counts(p, cs.looks, runs, rng))
        assert (upper < p).any(axis=1).sum() <= binom.ppf(0.999, runs, alpha)


def test_the_coverage_check_catches_a_naive_repeated_clopper_pearson():
    """The same check fails for per-look bounds at the full alpha: the test has power."""
    runs, alpha, p_star = 20_000, 0.05, 0.5
    looks = look_schedule(100_000)
    rng = np.random.default_rng(3)
    counts = _simulate_counts(np.nextafter(p_star, 0.0), looks, runs, rng)
    naive = np.stack([clopper_pearson_lower(counts[:, j], looks[j], alpha)
                      for j in range(looks.size)], axis=1)
    assert (naive >= p_star).any(axis=1).sum() > binom.ppf(0.999, runs, alpha)


def test_thresholds_agree_with_the_certified_frontier(thresholds):
    """At p*, the frontier certifies (d, r); a hair below, it does not (up to solver precision)."""
    atoms = [spec_atoms(d) for d in range(3)]
    assert thresholds[0, 0] == pytest.approx(0.05, rel=1e-9)
    assert np.all(np.diff(thresholds, axis=0) >= 0) and np.all(np.diff(thresholds, axis=1) >= 0)
    for d in range(3):
        for j, r in enumerate(RADII):
            p = thresholds[d, j]
            front = hc.certified_frontier(p, sigma=0.5, tau=0.05, atoms=atoms[: d + 1])
            assert front.largest_budget == d and front.radii[d] >= r * (1 - 1e-8)
            below = hc.certified_frontier(p * (1 - 1e-7), sigma=0.5, tau=0.05, atoms=atoms[: d + 1])
            assert not (below.largest_budget == d and below.radii[d] > r * (1 + 1e-6))


def test_thresholds_impossible_targets_and_discrete_only():
    spec_any = dict(SPEC, attacker_alphabet="any")
    p = certification_thresholds([0.0, 0.5], d_max=4, sigma=0.5, tau=0.05,
                                 atoms=lambda d: attack_atoms(spec_any, d))
    assert np.isinf(p[4]).all()             # a revealed symbol survives too often
    assert np.isfinite(p[0]).all()
    discrete = certification_thresholds([0.0, 0.5], d_max=1, sigma=None, tau=0.05, atoms=spec_atoms)
    assert np.isfinite(discrete[:, 0]).all() and np.isinf(discrete[:, 1]).all()
    with pytest.raises(ValueError, match="radii"):
        certification_thresholds([-1.0], d_max=0, sigma=0.5, tau=0.05, atoms=spec_atoms)


def test_reachable_threshold_is_the_smallest_count_that_certifies_at_n_max():
    cs = UnionClopperPearson(look_schedule(10_000), alpha=0.001)
    p_star = np.array([0.05, 0.3, 0.9, 0.998, 0.99999, 1.0, np.inf])
    reach = reachable_thresholds(p_star, cs)
    level = 0.001 / len(cs.looks)
    for p, q in zip(p_star[:4], reach[:4]):
        k = round(q * cs.n_max)
        assert clopper_pearson_lower(k, cs.n_max, level) >= p
        assert clopper_pearson_lower(k - 1, cs.n_max, level) < p
    assert np.isinf(reach[4:]).all()       # beyond what 10,000 samples can show


def test_target_status_is_sticky():
    status = target_status(0.5, 0.9, np.array([0.4, 0.6, 0.95]), np.array([0.41, 0.62, 0.96]))
    assert list(status) == [CERTIFIED, OPEN, DROPPED]
    again = target_status(0.0, 1.0, np.array([0.4, 0.6, 0.95]), np.array([0.41, 0.62, 0.96]),
                          previous=status)
    assert list(again) == [CERTIFIED, OPEN, DROPPED]


def test_run_targets_decides_easy_examples_fast_and_matches_the_truth(thresholds):
    cs = UnionClopperPearson(look_schedule(100_000), alpha=0.001)
    p_true = np.array([1.0, 0.999, 0.5, 0.02, 0.2])
    rng = np.random.default_rng(0)
    out = run_targets(lambda a, b: rng.binomial(b - a, p_true), cs, thresholds[0, 2])
    assert out.status.shape == (5, 1)
    assert list(out.status[:, 0]) == [CERTIFIED, CERTIFIED, CERTIFIED, DROPPED, DROPPED]
    assert out.samples[0] <= 16 and out.samples.max() <= 4096
    assert np.all(out.lower <= p_true) and np.all(out.upper >= p_true)


def test_run_targets_goes_to_n_max_only_when_undecided():
    cs = UnionClopperPearson(look_schedule(20_000), alpha=0.001)
    p_star = np.array([[0.5]])
    out = run_targets(lambda a, b: np.array([(b - a) // 2 + (b - a) % 2 * (a % 2)]), cs, p_star,
                      drop=False)
    assert out.samples[0] == 20_000 and out.status[0, 0] == OPEN


def test_frontier_converged_abstains_early_and_waits_for_radii():
    atoms = [spec_atoms(d) for d in range(3)]
    cs = UnionClopperPearson(look_schedule(100_000), alpha=0.001)
    # Hopeless: the upper bound is below tau (0.05).
    assert frontier_converged(0.0, 0.01, cs, sigma=0.5, tau=0.05, atoms=atoms, rtol=0.02)[0]
    # p-hat = 1 after 64 samples: more samples would raise r*(0) a lot.
    k = 64
    lo, hi = cs.lower(k, cs.looks.index(64)), 1.0
    assert not frontier_converged(lo, hi, cs, sigma=0.5, tau=0.05, atoms=atoms, rtol=0.02)[0]
    # A narrow interval at n_max: nothing left to gain.
    mid = 0.7
    assert frontier_converged(mid, mid + 1e-6, cs, sigma=0.5, tau=0.05, atoms=atoms, rtol=0.02)[0]


def test_bracket_root_ends_above_the_root_whatever_the_values():
    """The answer is a point found above the root, within xtol of it; misleading values only slow it."""
    from hybridcert.sequential import _bracket_root

    roots = np.array([-3.0, -0.25, 0.0, 1e-13, 2.5, 8.999])
    rng = np.random.default_rng(0)
    honest = _bracket_root(lambda z: (np.tanh(z - roots), z > roots), np.full(6, -4.0),
                           np.full(6, 9.0), 64)
    liar = _bracket_root(lambda z: (rng.normal(size=z.shape), z > roots), np.full(6, -4.0),
                         np.full(6, 9.0), 200)
    for found in (honest, liar):
        assert np.all(found > roots) and np.all(found - roots <= 1e-12 + 1e-15)
    # No root in the bracket: hi is kept (the caller reads it as "never certifies").
    kept = _bracket_root(lambda z: (z - 20.0, z > 20.0), np.zeros(2), np.full(2, 9.0), 64)
    assert np.all(kept == 9.0)


def test_thresholds_match_a_full_bisection_and_never_undercut_it(thresholds):
    """The bracketing search returns p* no smaller than 64 bisection steps would, to 1e-12."""
    from scipy.special import ndtr, ndtri

    for d in range(3):
        opts = [spec_atoms(k) for k in range(d + 1)]

        def worst(p, opts=opts):
            return np.min([[hc.worst_case_probability(p, sigma=0.5, atoms=a, radius=RADII) for a in o]
                           for o in opts], axis=(0, 1))

        lo, hi = np.full(RADII.size, ndtri(0.05)), np.full(RADII.size, 9.0)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            good = worst(ndtr(mid)) > 0.05
            hi, lo = np.where(good, mid, hi), np.where(good, lo, mid)
        assert np.all(thresholds[d] >= ndtr(hi) - 1e-15)
        np.testing.assert_allclose(thresholds[d], ndtr(hi), rtol=2e-12)
        assert np.all(worst(thresholds[d]) > 0.05)


def test_a_threshold_on_a_kink_is_certified_by_the_frontier_too():
    """Found by review: p* on an atom's mass (1 - 1/98 for beta 0.5, V = 50), where V exceeds
    tau by rounding noise alone at the bracket's end; the margin makes the frontier at p* agree."""
    for sigma, beta, vocab, tau in ((1.0, 0.5, 50, 0.5), (0.25, 0.5, 50, 0.5), (1.0, 0.9, 2, 0.1)):
        def atoms(d, beta=beta, vocab=vocab):
            return [hc.uniform_atoms(d, beta=beta, vocab_size=vocab)]

        radii = np.array([0.0, 0.1, 0.5])
        p = certification_thresholds(radii, d_max=2, sigma=sigma, tau=tau, atoms=atoms)
        for d in range(3):
            for j, r in enumerate(radii):
                if np.isfinite(p[d, j]) and p[d, j] < 1:
                    front = hc.certified_frontier(p[d, j], sigma=sigma, tau=tau, atoms=atoms,
                                                  d_max=d)
                    assert front.largest_budget == d and front.radii[d] >= r, (sigma, beta, d, r)


def test_decision_counts_are_exact_count_thresholds_at_every_look():
    """k_certify is the first count whose lower bound reaches p*, k_drop the last whose upper
    bound falls below p_reach, at every look, checked on both sides of each threshold
    (and at the ends: p* = 0 certifies at once, p* = inf or 1.0 never below n, p_reach inf drops
    every count)."""
    cs = UnionClopperPearson(look_schedule(5000), alpha=0.001, alpha_drop=0.01)
    p_star = np.array([0.0, 0.2, 0.6, 0.88, 0.99, 1.0, np.inf])
    p_reach = reachable_thresholds(p_star, cs)
    p_reach[-1] = np.inf   # "no count reaches p*": every upper bound falls below it
    k_certify, k_drop = decision_counts(cs, p_star, p_reach)
    assert k_certify.shape == k_drop.shape == (len(cs.looks), p_star.size)
    for j, n in enumerate(cs.looks):
        level, drop_level = cs.alpha / len(cs.looks), cs.alpha_drop / len(cs.looks)
        for t, (p, reach) in enumerate(zip(p_star, p_reach)):
            kc, kd = int(k_certify[j, t]), int(k_drop[j, t])
            assert 0 <= kc <= n + 1 and -1 <= kd <= n
            if kc <= n:
                assert clopper_pearson_lower(kc, n, level) >= p
            if kc >= 1:   # the count below certifies not (n + 1: not even n)
                assert clopper_pearson_lower(min(kc - 1, n), n, level) < p
            if kd >= 0:
                assert clopper_pearson_upper(kd, n, drop_level) < reach
            if kd < n:
                assert not clopper_pearson_upper(kd + 1, n, drop_level) < reach
    assert (k_certify[:, 0] == 0).all() and (k_drop[:, 0] == -1).all()   # p* = 0: certified
    n = np.asarray(cs.looks)
    assert (k_certify[:, -1] == n + 1).all() and (k_drop[:, -1] == n).all()
    assert (k_certify[:-1, 5] == n[:-1] + 1).all()   # p* = 1 needs a bound of exactly 1
