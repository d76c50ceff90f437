"""The floating-point error model the proofs rely on, checked against mpmath."""

import mpmath as mp
import numpy as np
from scipy.special import ndtr, ndtri

from hybridcert.certificate._numerics import (
    EPS,
    NDTRI_RTOL,
    complement_down,
    complement_up,
    phi_rtol,
)


def test_ndtr_relative_error_is_within_the_model():
    zs = np.concatenate([np.linspace(-38.4, 9, 6001), -np.logspace(-12, 1.58, 400),
                         np.logspace(-12, 0.95, 400)])
    with mp.workdps(40):
        worst = 0.0
        for z in zs:
            exact = mp.ncdf(mp.mpf(float(z)))
            if exact < mp.mpf("1e-300"):
                continue
            err = float(abs(mp.mpf(float(ndtr(z))) - exact) / exact)
            worst = max(worst, err / float(phi_rtol(np.float64(z))))
    assert worst < 0.75, f"ndtr error reaches {worst:.2f} of the model's bound"


def test_ndtri_relative_error_is_within_the_model():
    ys = np.concatenate([np.logspace(-300, -1, 600), 0.5 + np.linspace(-0.49, 0.49, 401),
                         1 - np.logspace(-16, -1, 200)])
    with mp.workdps(40):
        worst = 0.0
        for y in ys:
            x = mp.mpf(float(ndtri(y)))
            for _ in range(5):  # Newton on the exact CDF from scipy's answer
                x = x - (mp.ncdf(x) - mp.mpf(float(y))) / mp.npdf(x)
            if x != 0:
                worst = max(worst, float(abs(mp.mpf(float(ndtri(y))) - x) / abs(x)))
    assert worst < NDTRI_RTOL / 2


def test_complements_round_the_safe_way():
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(0, 1, 2000), 10.0 ** rng.uniform(-300, 0, 500)])
    for x in xs:
        exact = 1 - mp.mpf(float(x))
        assert mp.mpf(float(complement_down(np.float64(x)))) <= exact
        assert mp.mpf(float(complement_up(np.float64(x)))) >= exact
    assert EPS == np.finfo(float).eps
