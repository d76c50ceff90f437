"""The knapsack bound against an independent linear program over every noisy string."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

import hybridcert as hc


def _string_laws(d, beta, vocab_size):
    """Probabilities of every noisy string under x = 0^d and x' = 1^d (uniform kernel)."""
    alphabet = range(vocab_size)

    def law(sym, z):
        return 1 - beta if z == sym else beta / (vocab_size - 1)

    ps, qs = [], []
    for z in itertools.product(alphabet, repeat=d):
        ps.append(np.prod([law(0, s) for s in z]))
        qs.append(np.prod([law(1, s) for s in z]))
    return np.array(ps), np.array(qs)


@pytest.mark.parametrize("d,vocab_size,beta", [(1, 3, 0.25), (2, 3, 0.5), (3, 2, 0.3),
                                               (2, 4, 0.9), (3, 3, 1.0)])
def test_knapsack_equals_linear_program_over_strings(d, vocab_size, beta):
    ps, qs = _string_laws(d, beta, vocab_size)
    atoms = hc.uniform_atoms(d, beta=beta, vocab_size=vocab_size)
    for m in np.linspace(0.0, 1.0, 23):
        # min sum q f  s.t.  sum p f >= m, 0 <= f <= 1: the worst-case (randomised) classifier.
        lp = linprog(qs, A_ub=-ps[None, :], b_ub=[-m], bounds=(0, 1), method="highs")
        got = hc.discrete_bound(m, atoms)
        assert got <= lp.fun + 1e-9
        assert got == pytest.approx(lp.fun, abs=1e-9)


def test_upper_bound_mirrors_lower_bound():
    atoms = hc.uniform_atoms(3, beta=0.25, vocab_size=7)
    for p in np.linspace(0, 1, 41):
        upper = hc.discrete_bound_upper(p, atoms)
        assert upper == pytest.approx(1 - hc.discrete_bound(1 - p, atoms), abs=1e-12)


def test_absorbing_needs_more_than_one_minus_beta_to_the_d():
    d, beta = 4, 0.5
    atoms = hc.absorbing_atoms(d, beta=beta)
    threshold = 1 - beta**d
    assert hc.discrete_bound(threshold * (1 - 1e-9), atoms) == 0.0
    assert hc.discrete_bound(threshold + 0.01, atoms) == pytest.approx(0.01, rel=1e-9)


def test_vectorised_equals_scalar():
    atoms = hc.uniform_atoms(4, beta=0.25, vocab_size=11)
    ps = np.random.default_rng(3).uniform(0, 1, 200)
    batch = hc.discrete_bound(ps, atoms)
    assert np.array_equal(batch, [hc.discrete_bound(p, atoms) for p in ps])
