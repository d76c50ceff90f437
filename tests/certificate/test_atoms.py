"""Atoms against exact enumeration of every noisy string, in rational arithmetic."""

import itertools
from collections import defaultdict
from fractions import Fraction

import mp_oracle as O
import mpmath as mp
import numpy as np
import pytest

import hybridcert as hc
from hybridcert.certificate import atoms as atoms_mod
from hybridcert.certificate.atoms import PositionExperiment


def _uniform_kernel(symbol, alphabet, beta, universe):
    """Law of the noisy symbol: keep w.p. 1 - beta, else uniform over the alphabet minus itself."""
    others = [s for s in alphabet if s != symbol]
    law = {s: Fraction(0) for s in universe}
    law[symbol] += 1 - beta
    for s in others:
        law[s] += beta / len(others)
    return law


def _enumerated_atoms(x, x_adv, kernel, universe):
    """Group every noisy string z by its likelihood ratio q(z) / p(z); exact."""
    groups = defaultdict(lambda: [Fraction(0), Fraction(0)])
    laws_x = [kernel(s) for s in x]
    laws_a = [kernel(s) for s in x_adv]
    for z in itertools.product(universe, repeat=len(x)):
        p = q = Fraction(1)
        for i, s in enumerate(z):
            p *= laws_x[i][s]
            q *= laws_a[i][s]
        if p == 0 and q == 0:
            continue
        key = "inf" if p == 0 else q / p
        groups[key][0] += p
        groups[key][1] += q
    return groups


def _as_sorted(groups):
    finite = sorted((k, v) for k, v in groups.items() if k != "inf")
    out = [(float(p), float(q), float(k)) for k, (p, q) in finite]
    if "inf" in groups:
        p, q = groups["inf"]
        out.append((float(p), float(q), np.inf))
    return out


def _check(atoms, expected):
    got = sorted(zip(atoms.p_clean, atoms.p_adv, atoms.ratio), key=lambda t: t[2])
    # Atoms of equal ratio but different exponent vectors may stay separate: merge to compare.
    merged = defaultdict(lambda: [0.0, 0.0])
    for p, q, g in got:
        merged[round(g, 9) if np.isfinite(g) else g][0] += p
        merged[round(g, 9) if np.isfinite(g) else g][1] += q
    exp_merged = {(round(g, 9) if np.isfinite(g) else g): (p, q) for p, q, g in expected}
    assert set(merged) == set(exp_merged)
    for key, (p, q) in exp_merged.items():
        assert merged[key][0] == pytest.approx(p, rel=1e-13, abs=1e-300)
        assert merged[key][1] == pytest.approx(q, rel=1e-13, abs=1e-300)


@pytest.mark.parametrize("vocab_size", [2, 3, 4])
@pytest.mark.parametrize("d", [0, 1, 2, 3])
@pytest.mark.parametrize("beta", [Fraction(1, 4), Fraction(1, 2), Fraction(9, 10), Fraction(1)])
def test_uniform_atoms_match_enumeration(d, vocab_size, beta):
    alphabet = list(range(vocab_size))
    x, x_adv = [0] * d, [1] * d
    groups = _enumerated_atoms(x, x_adv, lambda s: _uniform_kernel(s, alphabet, beta, alphabet),
                               alphabet)
    atoms = hc.uniform_atoms(d, beta=float(beta), vocab_size=vocab_size)
    _check(atoms, _as_sorted(groups))
    assert len(atoms) <= 2 * d + 1


@pytest.mark.parametrize("d", [0, 1, 2, 4])
@pytest.mark.parametrize("beta", [Fraction(1, 10), Fraction(1, 2), Fraction(1)])
def test_absorbing_atoms_match_enumeration_and_closed_form(d, beta):
    universe = ["a", "b", "MASK"]

    def kernel(s):
        return {"a": (1 - beta) * (s == "a"), "b": (1 - beta) * (s == "b"), "MASK": beta}

    groups = _enumerated_atoms(["a"] * d, ["b"] * d, kernel, universe)
    atoms = hc.absorbing_atoms(d, beta=float(beta))
    _check(atoms, _as_sorted(groups))
    if 0 < d and beta < 1:
        p, q, g = atoms
        assert list(g) == [0.0, 1.0, np.inf]
        assert p[0] == pytest.approx(1 - float(beta) ** d, rel=1e-14)
        assert p[1] == q[1] == pytest.approx(float(beta) ** d, rel=1e-14)


def test_beta_one_gives_exact_zero_and_infinite_ratios():
    p, q, g = hc.uniform_atoms(2, beta=1.0, vocab_size=5)
    assert g[0] == 0.0 and g[-1] == np.inf
    assert q[0] == 0.0 and p[-1] == 0.0
    assert p.sum() == pytest.approx(1.0) and q.sum() == pytest.approx(1.0)


def test_categorical_atoms_match_enumeration():
    arities = [2, 3, 3]
    beta = Fraction(1, 3)
    universes = [list(range(v)) for v in arities]
    # Enumerate the heterogeneous product directly.
    groups = defaultdict(lambda: [Fraction(0), Fraction(0)])
    for z in itertools.product(*universes):
        p = q = Fraction(1)
        for i, s in enumerate(z):
            p *= _uniform_kernel(0, universes[i], beta, universes[i])[s]
            q *= _uniform_kernel(1, universes[i], beta, universes[i])[s]
        key = "inf" if p == 0 else q / p
        groups[key][0] += p
        groups[key][1] += q
    _check(hc.categorical_atoms(arities, beta=float(beta)), _as_sorted(groups))


@pytest.mark.parametrize("clean_in,adv_in", [(True, True), (False, True), (True, False),
                                              (False, False)])
def test_restricted_alphabet_experiments_match_enumeration(clean_in, adv_in):
    alphabet = [0, 1, 2, 3]
    x_sym = 0 if clean_in else "X"
    a_sym = 1 if adv_in else "Y"
    universe = [*alphabet, "X", "Y"]
    beta = Fraction(2, 5)
    groups = _enumerated_atoms([x_sym] * 2, [a_sym] * 2,
                               lambda s: _uniform_kernel(s, alphabet, beta, universe), universe)
    exp = atoms_mod.uniform_experiment(beta=float(beta), vocab_size=len(alphabet),
                                clean_in_alphabet=clean_in, adv_in_alphabet=adv_in)
    _check(atoms_mod.product_atoms([(exp, 2)]), _as_sorted(groups))


@pytest.mark.parametrize("d,v,beta", [(64, 10**9, 0.25), (32, 10**9, 0.01), (64, 2, 0.3),
                                      (40, 1000, 0.9), (16, 50, 1.0)])
def test_atoms_within_their_error_bound_at_high_precision(d, v, beta):
    atoms = hc.uniform_atoms(d, beta=beta, vocab_size=v)
    exact = O.uniform_atoms_by_k(d, beta, v)
    with mp.workdps(50):
        rho = (1 - mp.mpf(beta)) * (v - 1) / mp.mpf(beta) if beta < 1 else None
        worst = 0.0
        for lr, lp, lq in zip(atoms.log_ratio, atoms.log_p_clean, atoms.log_p_adv):
            matches = [k for k, (p, q) in exact.items()
                       if (p == 0) == (lp == -np.inf) and (q == 0) == (lq == -np.inf)
                       and (rho is None or not np.isfinite(lr) or abs(k * mp.log(rho) - lr) < 1e-6)]
            k = matches[0] if rho is not None and np.isfinite(lr) else None
            if k is None:
                continue
            p, q = exact[k]
            for got, want in ((lp, p), (lq, q)):
                if want > 0:
                    worst = max(worst, float(abs(mp.exp(mp.mpf(got)) / want - 1)))
            worst = max(worst, float(abs(mp.mpf(lr) - k * mp.log(rho))))
    assert worst <= atoms.rel_error, (worst, atoms.rel_error)
    assert atoms.rel_error < 1e-11


def test_field_choices_are_the_distinct_multisets():
    assert atoms_mod.field_choices([3, 5, 5, 2], 2) == [(5, 5), (3, 5), (2, 5), (2, 3)]
    assert atoms_mod.field_choices([3, 5], 0) == [()]
    with pytest.raises(ValueError, match="d must be <="):
        atoms_mod.field_choices([3, 5], 3)


@pytest.mark.parametrize("call,match", [
    (lambda: hc.uniform_atoms(1, beta=0.0, vocab_size=5), r"beta must lie in \(0, 1\]"),
    (lambda: hc.uniform_atoms(1, beta=1.5, vocab_size=5), r"beta must lie in \(0, 1\]"),
    (lambda: hc.uniform_atoms(1, beta=float("nan"), vocab_size=5), "beta must not be NaN"),
    (lambda: hc.uniform_atoms(1, beta=0.2, vocab_size=1), "vocab_size must be an integer >= 2"),
    (lambda: hc.uniform_atoms(-1, beta=0.2, vocab_size=5), "d must be an integer >= 0"),
    (lambda: hc.uniform_atoms(1.5, beta=0.2, vocab_size=5), "d must be an integer >= 0"),
    (lambda: hc.categorical_atoms([3, 1], beta=0.2), "arities must be an integer >= 2"),
    (lambda: PositionExperiment((0.5, 0.4), (0.5, 0.5)), "must sum to 1"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_atoms_from_probabilities_and_iteration():
    atoms = hc.Atoms.from_probabilities([0.5, 0.0, 0.5, 0.0], [0.25, 0.5, 0.25, 0.0])
    p, q, g = atoms
    assert list(g) == [0.5, 0.5, np.inf]  # sorted; equal ratios need not be merged
    assert list(p) == [0.5, 0.5, 0.0] and list(q) == [0.25, 0.25, 0.5]
    assert len(atoms) == 3


def test_neutral_kernel_collapses_to_one_atom():
    # beta = 1/2, V = 2: the noisy bit is independent of the input, nothing is revealed.
    p, q, g = hc.uniform_atoms(64, beta=0.5, vocab_size=2)
    assert list(g) == [1.0] and p[0] == pytest.approx(1.0) and q[0] == pytest.approx(1.0)
