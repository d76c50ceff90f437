"""Frontier over budgets, and the tabular worst case over which fields are changed."""

import itertools

import numpy as np
import pytest

import hybridcert as hc


def test_frontier_matches_per_budget_radii():
    atoms = [hc.uniform_atoms(d, beta=0.25, vocab_size=50) for d in range(7)]
    ps = np.array([0.999, 0.9, 0.3, 4e-5])
    front = hc.certified_frontier(ps, sigma=0.5, atoms=atoms, tau=4.6e-5)
    assert front.radii.shape == (4, 7) and front.d_max == 6
    for i, p in enumerate(ps):
        direct = [hc.certified_radius(p, sigma=0.5, atoms=a, tau=4.6e-5) for a in atoms]
        np.testing.assert_array_equal(front.radii[i], np.minimum.accumulate(direct))
        certified = [hc.discrete_bound(p, a) >= 4.6e-5 and p > 4.6e-5 for a in atoms]
        expected = (np.cumprod(certified).sum() - 1)
        assert front.largest_budget[i] == expected
    assert front.largest_budget[3] == -1  # p_lower below tau: nothing is certified


def test_frontier_accepts_a_callable_and_scalar():
    front = hc.certified_frontier(0.99, sigma=1.0, d_max=4, tau=1e-3,
                                  atoms=lambda d: hc.absorbing_atoms(d, beta=0.9))
    assert front.radii.shape == (5,) and isinstance(front.largest_budget, int)
    assert np.all(np.diff(front.radii) <= 0)
    with pytest.raises(ValueError, match="d_max is required"):
        hc.certified_frontier(0.99, sigma=1.0, atoms=lambda d: hc.absorbing_atoms(d, beta=0.9))


def _brute_force_worst(p, sigma, arities, beta, d, tau):
    """Minimum over every subset of d field positions, not only over distinct multisets."""
    return min(
        hc.certified_radius(p, sigma=sigma, tau=tau,
                            atoms=hc.categorical_atoms([arities[i] for i in subset], beta=beta))
        for subset in itertools.combinations(range(len(arities)), d)
    )


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_categorical_frontier_is_the_minimum_over_every_field_subset(beta):
    arities = [2, 3, 3, 7, 12]
    p, sigma, tau = 0.995, 0.5, 1e-4
    front = hc.categorical_frontier(p, sigma=sigma, arities=arities, beta=beta, tau=tau)
    brute = [_brute_force_worst(p, sigma, arities, beta, d, tau) for d in range(len(arities) + 1)]
    np.testing.assert_allclose(front.radii, np.minimum.accumulate(brute), rtol=0, atol=0)


def test_largest_arities_are_not_always_the_worst():
    # With beta near 1 a binary field is flipped almost surely and reveals the change, while a
    # 12-category field hides it among the other categories: the smallest arity is the worst.
    arities, beta, p, tau = [2, 12], 0.9, 0.999, 1e-4
    small = hc.certified_radius(p, sigma=0.5, tau=tau, atoms=hc.categorical_atoms([2], beta=beta))
    large = hc.certified_radius(p, sigma=0.5, tau=tau, atoms=hc.categorical_atoms([12], beta=beta))
    assert small < large
    front = hc.categorical_frontier(p, sigma=0.5, arities=arities, beta=beta, d_max=1, tau=tau)
    assert front.radii[1] == small
    # ...and with small beta it is the other way round.
    small = hc.certified_radius(p, sigma=0.5, tau=tau, atoms=hc.categorical_atoms([2], beta=0.1))
    large = hc.certified_radius(p, sigma=0.5, tau=tau, atoms=hc.categorical_atoms([12], beta=0.1))
    assert large < small


def test_categorical_frontier_rejects_bad_input():
    with pytest.raises(ValueError, match="arities must be an integer >= 2"):
        hc.categorical_frontier(0.9, sigma=1.0, arities=[1, 3], beta=0.2)
    with pytest.raises(ValueError, match="d_max must be <= the number of fields"):
        hc.categorical_frontier(0.9, sigma=1.0, arities=[2, 3], beta=0.2, d_max=3)
