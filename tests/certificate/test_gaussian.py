"""Cohen's radius: exact to the last ulps, never above the 50-digit value."""

import mpmath as mp
import numpy as np
import pytest

import hybridcert as hc


def _exact(p, sigma, tau):
    with mp.workdps(50):
        inv = lambda x: mp.sqrt(2) * mp.erfinv(2 * mp.mpf(x) - 1)  # noqa: E731
        return max(mp.mpf(sigma) * (inv(p) - inv(tau)), 0)


def test_never_above_and_accurate_on_an_extreme_grid():
    ps = [1e-15, 1e-9, 0.3, 0.5, 0.5 + 1e-12, 0.6, 0.9, 0.999, 1 - 1e-9, 1 - 1e-15]
    taus = [1e-15, 4.6e-5, 0.1, 0.5, 0.9]
    for p in ps:
        for tau in taus:
            for sigma in (0.12, 0.5, 1.0, 3.0):
                got = hc.gaussian_radius(p, sigma=sigma, tau=tau)
                exact = _exact(p, sigma, tau)
                assert mp.mpf(got) <= exact
                if exact > 1e-6:
                    assert float(abs(got - exact) / exact) < 1e-13


def test_limits_and_shapes():
    assert hc.gaussian_radius(0.5, sigma=1.0) == 0.0
    assert hc.gaussian_radius(0.3, sigma=1.0, tau=0.4) == 0.0
    assert hc.gaussian_radius(1.0, sigma=1.0) == np.inf
    out = hc.gaussian_radius(np.array([[0.9], [0.99]]), sigma=np.array([0.25, 0.5]), tau=0.5)
    assert out.shape == (2, 2)
    assert out[1, 1] == hc.gaussian_radius(0.99, sigma=0.5)
    assert isinstance(hc.gaussian_radius(0.9, sigma=1.0), float)


@pytest.mark.parametrize("kwargs,match", [
    (dict(p_lower=float("nan"), sigma=1.0), "p_lower must not be NaN"),
    (dict(p_lower=1.2, sigma=1.0), r"p_lower must lie in \[0, 1\]"),
    (dict(p_lower=0.9, sigma=0.0), "sigma must be positive"),
    (dict(p_lower=0.9, sigma=1.0, tau=1.0), r"tau must lie in the open interval \(0, 1\)"),
    (dict(p_lower=0.9, sigma=1.0, tau=0.0), r"tau must lie in the open interval \(0, 1\)"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hc.gaussian_radius(**kwargs)
