"""Every public certificate against the committed 50-digit reference vectors.

``data/reference.jsonl`` is produced by ``make_reference.py`` with the
independent ``mp_oracle``; it spans tau down to 1e-15, p_lower up to
1 - 1e-15, beta = 1, vocab_size up to 1e9 and d up to 32. The check is the one
a certificate must pass: never above the exact value (never below it for the
runner-up's upper bound), and at least 99% of the values within 1e-6 relative.
"""

import json
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest

import hybridcert as hc

ROWS = [json.loads(line) for line in
        (Path(__file__).with_name("data") / "reference.jsonl").read_text().splitlines()]


def _atoms(row):
    if row["kernel"] == "uniform":
        return hc.uniform_atoms(row["d"], beta=row["beta"], vocab_size=row["V"])
    if row["kernel"] == "absorbing":
        return hc.absorbing_atoms(row["d"], beta=row["beta"])
    return hc.categorical_atoms(row["arities"], beta=row["beta"])


def _computed(row):
    atoms = _atoms(row)
    return {
        "exact_radius": hc.certified_radius(row["p"], sigma=1.0, atoms=atoms, tau=row["tau"]),
        "exact_discrete": hc.discrete_bound(row["p"], atoms),
        "exact_v": hc.worst_case_probability(row["p"], sigma=1.0, atoms=atoms, radius=row["radius"]),
        "exact_upper": hc.worst_case_probability_upper(row["p_upper"], sigma=1.0, atoms=atoms,
                                                       radius=row["radius"]),
        "exact_multiclass": hc.multiclass_radius(row["p"], row["p_upper"], sigma=1.0, atoms=atoms),
    }


@pytest.fixture(scope="module")
def results():
    return [(row, _computed(row)) for row in ROWS]


def test_there_are_enough_reference_vectors():
    assert len(ROWS) >= 300
    assert min(r["tau"] for r in ROWS) <= 1e-15
    assert max(r["p"] for r in ROWS) >= 1 - 1e-14
    assert any(r["beta"] == 1.0 for r in ROWS)
    assert max(r.get("V", 0) for r in ROWS) >= 10**9
    assert max(r.get("d", 0) for r in ROWS) >= 32


@pytest.mark.parametrize("key", ["exact_radius", "exact_discrete", "exact_v", "exact_multiclass"])
def test_never_above_the_exact_value(results, key):
    with mp.workdps(50):
        above = [(row, got[key]) for row, got in results if mp.mpf(got[key]) > mp.mpf(row[key])]
    assert not above, above[:3]


def test_upper_bound_never_below_the_exact_value(results):
    with mp.workdps(50):
        below = [(row, got["exact_upper"]) for row, got in results
                 if mp.mpf(got["exact_upper"]) < mp.mpf(row["exact_upper"])]
    assert not below, below[:3]


@pytest.mark.parametrize("key", ["exact_radius", "exact_discrete", "exact_v", "exact_upper",
                                 "exact_multiclass"])
def test_accurate_to_one_in_a_million(results, key):
    with mp.workdps(50):
        rel = [float(abs(mp.mpf(got[key]) - mp.mpf(row[key])) / mp.mpf(row[key]))
               if mp.mpf(row[key]) > 0 else float(got[key] > 1e-290)
               for row, got in results]
    rel = np.array(rel)
    assert np.mean(rel <= 1e-6) >= 0.99, sorted(rel)[-5:]
    assert np.median(rel) <= 1e-9
