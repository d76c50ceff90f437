"""Hybrid certificate: limits, monotonicity, oracle agreement, batching, errors."""

import mp_oracle as O
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hybridcert as hc


def test_d0_is_cohen_exactly():
    atoms0 = hc.uniform_atoms(0, beta=0.3, vocab_size=9)
    ps = np.linspace(0.01, 0.999999, 101)
    for tau in (0.5, 4.6e-5):
        assert np.array_equal(hc.certified_radius(ps, sigma=0.7, atoms=atoms0, tau=tau),
                              hc.gaussian_radius(ps, sigma=0.7, tau=tau))


def test_small_radius_and_huge_sigma_reach_the_discrete_bound():
    atoms = hc.uniform_atoms(3, beta=0.25, vocab_size=20)
    for p in (0.3, 0.8, 0.99, 1 - 1e-9):
        disc = hc.discrete_bound(p, atoms)
        near = hc.worst_case_probability(p, sigma=1.0, atoms=atoms, radius=1e-7)
        flat = hc.worst_case_probability(p, sigma=1e8, atoms=atoms, radius=1.0)
        assert near <= disc and flat <= disc
        assert near == pytest.approx(disc, rel=1e-5, abs=1e-12)
        assert flat == pytest.approx(disc, rel=1e-5, abs=1e-12)


def test_radius_zero_is_the_discrete_bound():
    atoms = hc.uniform_atoms(2, beta=0.1, vocab_size=5)
    assert hc.worst_case_probability(0.9, sigma=1.0, atoms=atoms, radius=0.0) == \
        hc.discrete_bound(0.9, atoms)


@settings(max_examples=60, deadline=None)
@given(p=st.floats(0.05, 1 - 1e-12), d=st.integers(1, 6), beta=st.sampled_from([0.1, 0.25, 0.6, 1.0]),
       vocab=st.sampled_from([2, 3, 10, 1000]), r1=st.floats(0, 3), r2=st.floats(0, 3))
def test_monotone_in_radius_and_budget(p, d, beta, vocab, r1, r2):
    lo_r, hi_r = sorted((r1, r2))
    atoms = hc.uniform_atoms(d, beta=beta, vocab_size=vocab)
    v_lo = hc.worst_case_probability(p, sigma=1.0, atoms=atoms, radius=lo_r)
    v_hi = hc.worst_case_probability(p, sigma=1.0, atoms=atoms, radius=hi_r)
    assert v_hi <= v_lo * (1 + 1e-9) + 1e-300
    more = hc.uniform_atoms(d + 1, beta=beta, vocab_size=vocab)
    r_d = hc.certified_radius(p, sigma=1.0, atoms=atoms, tau=1e-4)
    r_more = hc.certified_radius(p, sigma=1.0, atoms=more, tau=1e-4)
    assert r_more <= r_d * (1 + 1e-9)


def test_certificate_holds_at_its_radius_and_fails_just_beyond():
    atoms = hc.uniform_atoms(2, beta=0.25, vocab_size=50)
    oracle_atoms = O.uniform_atoms(2, 0.25, 50)
    for p, tau in ((0.9, 4.6e-5), (0.999, 0.1), (0.6, 1e-4)):
        r = hc.certified_radius(p, sigma=1.0, atoms=atoms, tau=tau)
        assert r > 0
        assert O.worst_case_probability(p, mp.mpf(r), oracle_atoms) >= tau
        assert O.worst_case_probability(p, mp.mpf(r) * (1 + 1e-6), oracle_atoms) < tau


@pytest.mark.parametrize("p,tau,d,vocab,beta", [
    (1 - 1e-15, 1e-15, 8, 10**9, 0.25),
    (1 - 1e-12, 4.6e-5, 4, 1000, 1.0),
    (0.999, 1e-15, 32, 2, 0.1),
    (0.75, 0.5, 2, 3, 0.9),
])
def test_agrees_with_the_oracle_at_the_extremes(p, tau, d, vocab, beta):
    atoms = hc.uniform_atoms(d, beta=beta, vocab_size=vocab)
    exact = O.certified_scaled_radius(p, tau, O.uniform_atoms(d, beta, vocab))
    got = hc.certified_radius(p, sigma=1.0, atoms=atoms, tau=tau)
    assert mp.mpf(got) <= exact
    if exact > 0:
        assert float(abs(got - exact) / exact) < 1e-8


def test_not_certified_cases_return_zero():
    atoms = hc.uniform_atoms(1, beta=0.25, vocab_size=5)
    assert hc.certified_radius(0.4, sigma=1.0, atoms=atoms) == 0.0  # p below tau
    assert hc.certified_radius(0.95, sigma=1.0, atoms=atoms) == 0.0  # discrete bound 0.4 < 1/2
    beta_one = hc.uniform_atoms(1, beta=1.0, vocab_size=2)  # a flipped bit reveals everything
    assert hc.certified_radius(1 - 1e-12, sigma=1.0, atoms=beta_one, tau=0.01) == 0.0


def test_p_one_is_an_infinite_radius_when_nothing_is_revealed():
    atoms = hc.uniform_atoms(2, beta=0.25, vocab_size=5)
    assert hc.certified_radius(1.0, sigma=1.0, atoms=atoms) == np.inf
    absorbing = hc.absorbing_atoms(2, beta=0.5)  # ratio-inf mass 0.75 > 1 - tau
    assert hc.certified_radius(1.0, sigma=1.0, atoms=absorbing, tau=0.5) == 0.0


def test_batch_equals_scalar_and_broadcasts():
    atoms = hc.uniform_atoms(3, beta=0.25, vocab_size=30)
    rng = np.random.default_rng(5)
    ps = rng.uniform(0.2, 1, 64)
    taus = rng.choice([0.5, 4.6e-5, 1e-10], 64)
    batch = hc.certified_radius(ps, sigma=0.5, atoms=atoms, tau=taus)
    single = [hc.certified_radius(p, sigma=0.5, atoms=atoms, tau=t) for p, t in zip(ps, taus)]
    np.testing.assert_array_equal(batch, single)
    grid = hc.certified_radius(ps[:5, None], sigma=np.array([0.25, 0.5, 1.0]), atoms=atoms, tau=1e-3)
    assert grid.shape == (5, 3)
    assert isinstance(hc.certified_radius(0.9, sigma=1.0, atoms=atoms), float)


def test_multiclass_d0_is_cohens_two_label_bound():
    atoms0 = hc.uniform_atoms(0, beta=0.3, vocab_size=9)
    for pa, pb in ((0.8, 0.1), (0.6, 0.3), (0.999, 1e-6)):
        with mp.workdps(50):
            inv = lambda x: mp.sqrt(2) * mp.erfinv(2 * mp.mpf(x) - 1)  # noqa: E731
            exact = (inv(pa) - inv(pb)) / 2
        got = hc.multiclass_radius(pa, pb, sigma=1.0, atoms=atoms0)
        assert mp.mpf(got) <= exact and float((exact - got) / exact) < 1e-12


def test_multiclass_with_budget_matches_oracle():
    atoms = hc.uniform_atoms(2, beta=0.4, vocab_size=2)
    ex_atoms = O.uniform_atoms(2, 0.4, 2)
    for pa, pb in ((0.95, 0.03), (0.999, 0.0005)):
        exact = O.multiclass_scaled_radius(pa, pb, ex_atoms)
        got = hc.multiclass_radius(pa, pb, sigma=1.0, atoms=atoms)
        assert mp.mpf(got) <= exact
        assert float(abs(got - exact) / exact) < 1e-8
    # Binary majority: p_B = 1 - p_A gives the threshold rule at tau = 1/2.
    assert hc.multiclass_radius(0.99, 0.01, sigma=1.0, atoms=atoms) == pytest.approx(
        hc.certified_radius(0.99, sigma=1.0, atoms=atoms, tau=0.5), rel=1e-8)


def test_multiclass_edge_bounds():
    atoms0 = hc.uniform_atoms(0, beta=0.3, vocab_size=9)
    r = hc.multiclass_radius(0.999, 0.0, sigma=1.0, atoms=atoms0)
    assert np.isfinite(r) and r > hc.multiclass_radius(0.999, 1e-12, sigma=1.0, atoms=atoms0)
    atoms = hc.uniform_atoms(1, beta=0.2, vocab_size=9)  # no ratio-inf atoms: nothing reveals x'
    assert hc.multiclass_radius(1.0, 0.0, sigma=1.0, atoms=atoms) == np.inf
    assert hc.multiclass_radius(0.3, 0.3, sigma=1.0, atoms=atoms) == 0.0


def test_upper_probability_never_below_oracle():
    atoms = hc.uniform_atoms(3, beta=0.25, vocab_size=7)
    ex_atoms = O.uniform_atoms(3, 0.25, 7)
    for pb, r in ((0.01, 0.3), (0.2, 1.0), (1e-9, 2.0)):
        with mp.workdps(50):
            exact = 1 - O.worst_case_probability(1 - mp.mpf(pb), mp.mpf(r), ex_atoms)
        got = hc.worst_case_probability_upper(pb, sigma=1.0, atoms=atoms, radius=r)
        assert mp.mpf(got) >= exact
        assert float((got - exact) / exact) < 1e-8


@pytest.mark.parametrize("call,match", [
    (lambda a: hc.certified_radius(float("nan"), sigma=1.0, atoms=a), "p_lower must not be NaN"),
    (lambda a: hc.certified_radius(-0.1, sigma=1.0, atoms=a), r"p_lower must lie in \[0, 1\]"),
    (lambda a: hc.certified_radius(0.9, sigma=-1.0, atoms=a), "sigma must be positive"),
    (lambda a: hc.certified_radius(0.9, sigma=1.0, atoms=a, tau=1.5), "tau must lie in the open"),
    (lambda a: hc.worst_case_probability(0.9, sigma=1.0, atoms=a, radius=-1), "radius must be >= 0"),
    (lambda a: hc.multiclass_radius(0.7, 0.4, sigma=1.0, atoms=a), "p_lower \\+ p_upper"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(hc.uniform_atoms(1, beta=0.25, vocab_size=5))
