"""The look scheduler: certificates identical to one-at-a-time sequential certification."""

import threading
import time

import numpy as np
import pytest

from hybridcert import SmoothedClassifier
from hybridcert.noise import UniformSubstitution
from hybridcert.scheduler import LookScheduler
from hybridcert.sequential import UnionClopperPearson, look_schedule
from hybridcert.stats import clopper_pearson_lower, clopper_pearson_upper

LEVELS = (0.2, 0.42, 0.47, 0.5, 0.6, 1.0)   # easy, near the thresholds, hopeless
TOKENS = np.arange(6) % 5
CRASH = 13   # a noisy first token equal to this makes the model raise


def brightness(tokens, x):
    """Labels each sample on its own; raises on any batch holding a CRASH sample."""
    if (np.asarray(tokens)[:, 0] == CRASH).any():
        raise RuntimeError("token 13 is not supported")
    s = x.mean(axis=tuple(range(1, x.ndim))) + 0.02 * (tokens[:, 1] % 3)
    return (s > 0.45).astype(int)


def smoothed(decision="threshold"):
    return SmoothedClassifier(brightness, discrete_noise=UniformSubstitution(beta=0.3,
                                                                             vocab_size=20),
                              sigma=0.5, decision=decision,
                              tau=0.2 if decision == "threshold" else None, batch_size=32,
                              on_model_error="flag", max_error_rate=1.0)


OPTIONS = {"alpha": 0.01, "d_max": 2, "n_max": 4000}


def inputs():
    return [(TOKENS, np.full((3, 3), v), 100 + i) for i, v in enumerate(LEVELS)]


def alone(sm, x_d, x_c, rs, targets):
    return sm.certify(x_d, x_c, sampling="sequential", targets=targets, random_state=rs,
                      **OPTIONS)


@pytest.mark.parametrize("decision", ["threshold", "majority"])
@pytest.mark.parametrize("targets", [[(1, 0.5)], None, "frontier"])
def test_batched_certificates_equal_one_at_a_time(decision, targets):
    sm = smoothed(decision)
    expected = [alone(sm, *x, targets) for x in inputs()]
    # a batch of 5 cuts looks of 4, 8, 12, ... across calls; a window of 3 forces refills
    scheduler = LookScheduler(sm, targets=targets, max_batch=5, window=3, **OPTIONS)
    got = list(scheduler.certify_many(inputs()))
    assert [c.to_dict() for c in got] == [c.to_dict() for c in expected]
    assert sum(c.errors for c in got) > 0          # the crashing samples were met, and kept
    if targets != "frontier":
        assert len({c.model_calls for c in got}) > 2   # inputs of different difficulty
    unordered = dict(LookScheduler(sm, targets=targets, max_batch=64, **OPTIONS)
                     .certify_many(inputs(), ordered=False))
    assert [unordered[i].to_dict() for i in range(len(LEVELS))] == [c.to_dict()
                                                                    for c in expected]


def test_batches_are_full_and_shared():
    sizes = []

    def model(tokens, x):
        sizes.append(len(x))
        return (x.mean(axis=(1, 2)) > 0.45).astype(int)

    sm = SmoothedClassifier(model, discrete_noise=None, sigma=0.5, decision="threshold",
                            tau=0.2)
    xs = [(None, np.full((3, 3), v), i) for i, v in enumerate(np.linspace(0.3, 1, 16))]
    certs = list(LookScheduler(sm, targets=[(0, 0.25)], max_batch=64, window=16,
                               **{**OPTIONS, "d_max": 0}).certify_many(xs))
    assert sum(sizes) == sum(c.model_calls for c in certs)
    rounds = max(len(c.settings["sequential"]["look_counts"]) for c in certs)
    assert sizes[0] == 64                                # 16 first looks of 4 in one call
    assert sum(size < 64 for size in sizes) <= rounds    # at most one partial batch a round


def test_an_error_fails_only_the_input_that_owns_the_sample():
    def fussy(tokens, x):
        if (x.mean(axis=(1, 2)) < -5).any():   # only the poisoned input's samples
            return np.zeros(len(x) + 1, dtype=int)   # bad labels: refused by check_labels
        return (x.mean(axis=(1, 2)) > 0.45).astype(int)

    sm = SmoothedClassifier(fussy, discrete_noise=None, sigma=0.5, decision="threshold",
                            tau=0.2)
    bad = np.full((3, 3), -9.0)
    xs = [(None, np.full((3, 3), 0.9), 0), (None, bad, 1), (None, np.full((3, 3), 0.1), 2)]
    options = {**OPTIONS, "d_max": 0}
    got = list(LookScheduler(sm, targets=[(0, 0.0)], max_batch=16, **options)
               .certify_many(xs, return_exceptions=True))
    assert isinstance(got[1], ValueError) and "shape" in str(got[1])
    for i in (0, 2):
        assert got[i].to_dict() == sm.certify(None, xs[i][1], sampling="sequential",
                                              targets=[(0, 0.0)], random_state=i,
                                              **options).to_dict()
    with pytest.raises(ValueError, match="shape"):
        list(LookScheduler(sm, targets=[(0, 0.0)], **options).certify_many(xs))


def test_submit_from_several_threads():
    sm = smoothed("majority")
    xs = inputs()
    expected = [alone(sm, *x, [(1, 0.5)]).to_dict() for x in xs]
    results = {}
    with LookScheduler(sm, targets=[(1, 0.5)], max_batch=16, **OPTIONS) as scheduler:
        def client(ids):
            futures = {i: scheduler.submit(*xs[i]) for i in ids}
            results.update({i: f.result(timeout=60).to_dict() for i, f in futures.items()})

        threads = [threading.Thread(target=client, args=(ids,))
                   for ids in ([0, 3], [1, 4], [2, 5])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [results[i] for i in range(len(xs))] == expected
    with pytest.raises(ValueError, match="max_calls"):
        LookScheduler(sm, **OPTIONS).submit(*xs[0], max_calls=10)   # < n0 = 100


def test_budgets_stop_at_a_look_with_undecided_targets_never_a_guess():
    sm = smoothed("threshold")
    hard = (TOKENS, np.full((3, 3), 0.32), 7)   # p near p*(0, 0): many samples
    full = alone(sm, *hard, [(0, 0.0)])
    assert full.model_calls > 200
    with LookScheduler(sm, targets=[(0, 0.0)], **OPTIONS) as scheduler:
        capped = scheduler.submit(*hard, max_calls=100).result(timeout=60)
        late = scheduler.submit(*hard, deadline=time.monotonic() - 1).result(timeout=60)
    looks = capped.settings["sequential"]["look_counts"]
    assert capped.model_calls == capped.n[0] <= 100 < capped.n[0] * np.sqrt(2) + 4
    assert looks == full.settings["sequential"]["look_counts"][:len(looks)]   # a prefix
    assert capped.decisions[(0, 0.0)] == "undecided"
    assert capped.settings["sequential"]["stopped"] == "max_calls"
    assert capped.p_lower <= full.p_lower
    assert late.model_calls == 0 and late.decisions[(0, 0.0)] == "undecided"
    assert late.settings["sequential"]["stopped"] == "deadline" and late.p_lower == 0.0


def test_vectorised_bounds_equal_scalar_ones():
    cs = UnionClopperPearson(look_schedule(100_000), alpha=0.001)
    rng = np.random.default_rng(0)
    look = rng.integers(0, len(cs.looks), 500)
    k = rng.integers(0, np.asarray(cs.looks)[look] + 1)
    level = cs.alpha / len(cs.looks)
    np.testing.assert_array_equal(cs.lower(k, look), [clopper_pearson_lower(int(a), cs.looks[j],
                                                                            level)
                                                      for a, j in zip(k, look)])
    np.testing.assert_array_equal(cs.upper(k, look), [cs.upper(int(a), int(j))
                                                      for a, j in zip(k, look)])
    assert cs.upper(3, 2) == clopper_pearson_upper(3, cs.looks[2], level)


def test_settings_only_work_is_done_once_per_run():
    from hybridcert.smoothing import _look_rule

    sm = smoothed("threshold")
    _look_rule.cache_clear()
    list(LookScheduler(sm, targets=[(1, 0.5)], **OPTIONS).certify_many(inputs()))
    assert _look_rule.cache_info().misses == 1


def test_the_runner_certifies_sequential_runs_through_the_scheduler(tmp_path):
    from hybridcert.runner import RESULTS, as_split, certify_split, read_results, run_one
    from hybridcert.spec import EstimationSpec

    sm = smoothed("threshold")
    xs = [(TOKENS, np.full((3, 3), v), i % 2) for i, v in enumerate(LEVELS)]
    spec = EstimationSpec(n0=100, alpha=0.01, d_max=2, seed=3, sampling="sequential",
                          n_max=4000)
    settings = {"run": "test", **sm.settings_for(spec)}
    split = as_split(xs)
    certify_split(sm, split, tmp_path, settings, spec, limit=2, progress=False)
    certify_split(sm, split, tmp_path, settings, spec, progress=False)   # resumes
    rows = read_results(tmp_path / RESULTS)
    assert sorted(rows) == [str(i) for i in range(len(xs))]
    for i, (x_d, x_c, y) in enumerate(xs):
        alone_row = run_one(sm, i, str(i), y, x_d, x_c, spec, start=0.0)
        got = {k: v for k, v in rows[str(i)].items() if k != "seconds"}
        assert got == {k: v for k, v in alone_row.items() if k != "seconds"}
