"""Clopper-Pearson bounds: exact coverage computed from the binomial law, not simulated."""

import numpy as np
import pytest
from scipy.stats import binom

from hybridcert.stats import clopper_pearson_lower, clopper_pearson_upper, split_alpha


@pytest.mark.parametrize("n", [1, 10, 100, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_exact_coverage_of_both_bounds(n, alpha):
    k = np.arange(n + 1)
    lower = clopper_pearson_lower(k, n, alpha)
    upper = clopper_pearson_upper(k, n, alpha)
    for p in np.linspace(0.0005, 0.9995, 97):
        pmf = binom.pmf(k, n, p)
        assert pmf[lower <= p].sum() >= 1 - alpha - 1e-12
        assert pmf[upper >= p].sum() >= 1 - alpha - 1e-12


def test_edges_and_monotonicity():
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_upper(50, 50, 0.01) == 1.0
    lows = clopper_pearson_lower(np.arange(51), 50, 0.01)
    assert np.all(np.diff(lows) > 0)
    assert clopper_pearson_lower(10_000, 10_000, 0.001) == pytest.approx(0.001 ** (1 / 10_000))
    assert split_alpha(0.01, 9) == pytest.approx(0.01 / 9)


@pytest.mark.parametrize("call,match", [
    (lambda: clopper_pearson_lower(5, 4, 0.1), r"successes must be an integer in \[0, n\]"),
    (lambda: clopper_pearson_lower(1, 0, 0.1), "n must be an integer >= 1"),
    (lambda: clopper_pearson_lower(1, 4, 1.0), r"alpha must lie in the open interval \(0, 1\)"),
    (lambda: clopper_pearson_upper(1.5, 4, 0.1), "successes must be an integer"),
    (lambda: split_alpha(0.1, 0), "estimates must be an integer >= 1"),
    (lambda: split_alpha(0.001, 1.5), "estimates must be an integer >= 1"),
    (lambda: clopper_pearson_lower(1, np.inf, 0.1), r"n must be an integer >= 1 \(finite\)"),
    (lambda: clopper_pearson_upper(1, np.inf, 0.1), r"n must be an integer >= 1 \(finite\)"),
    (lambda: clopper_pearson_lower("1", 5, 0.1), "successes must be an integer"),
    (lambda: clopper_pearson_lower(True, 5, 0.1), "successes must be an integer"),
    (lambda: clopper_pearson_lower(1, True, 0.1), "n must be an integer"),
    (lambda: clopper_pearson_lower(1, 5, "0.1"), "alpha must lie in the open interval"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
