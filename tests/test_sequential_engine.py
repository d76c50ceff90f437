"""The engine's sequential sampling, counter-based noise streams and multiclass runner-up rule,
each checked end to end through the public API (certify, then attack within the certificate and
bound the attacked smoothed probability by Monte Carlo)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import ndtr

import hybridcert as hc
from hybridcert.noise import UniformSubstitution
from hybridcert.rundir import SettingsMismatch, prepare_run_dir
from hybridcert.sampling import ABSTAIN, LabelCounts, count_labels
from hybridcert.scheduler import LookScheduler
from hybridcert.sequential import LookRule, UnionClopperPearson, run_targets
from hybridcert.smoothing import _look_rule
from hybridcert.streams import STREAM_VERSION, NoiseStream, block_edges

VOCAB, BETA, SIGMA = 20, 0.25, 0.5


class HalfSpace:
    """Flags (label 1) iff token 0 is its clean value 3 and x[0] <= b: p = (1 - beta) Phi((b - x0)/s)
    at a clean input, in closed form. Records every batch it sees."""

    def __init__(self, b: float):
        self.b = b
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, tokens, cont):
        self.seen.append((tokens.copy(), cont.copy()))
        return ((tokens[:, 0] == 3) & (cont[:, 0] <= self.b)).astype(int)


def smoothed(model, batch_size=256, **kw):
    kw.setdefault("decision", "threshold")
    kw.setdefault("tau", 0.05)
    return hc.SmoothedClassifier(model, discrete_noise=UniformSubstitution(BETA, vocab_size=VOCAB),
                                 sigma=SIGMA, batch_size=batch_size, **kw)


TOKENS = np.array([3, 1, 4, 1, 5])


def p_clean(b):
    return (1 - BETA) * ndtr(b / SIGMA)


# --------------------------------------------------------------------------- noise streams


def test_block_layout_doubles_from_128_and_caps():
    """counter-v2: one block of 128 samples first (a noise block costs ~0.1 ms whatever its size
    below that, and easy inputs stop near 100 samples), doubling to ``block_max``; a smaller
    ``block_max`` (large samples) caps the first block too."""
    edges = block_edges(5000)
    assert list(edges[:6]) == [0, 128, 256, 512, 1024, 2048]
    assert np.all(np.diff(edges)[-3:] == 1024) and edges[-1] >= 5000
    assert list(block_edges(100, block_max=32)) == [0, 32, 64, 96, 128]
    assert list(block_edges(9, block_max=4)) == [0, 4, 8, 12]
    assert NoiseStream.describe(32) == {"version": STREAM_VERSION, "first_block": 32,
                                        "block_max": 32}


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_the_model_sees_the_same_samples_whatever_the_batch_size(batch_size):
    reference = HalfSpace(0.3)
    ref = smoothed(reference, batch_size=333).certify(TOKENS, np.zeros(2), n=700, random_state=5)
    model = HalfSpace(0.3)
    cert = smoothed(model, batch_size=batch_size).certify(TOKENS, np.zeros(2), n=700,
                                                          random_state=5)
    for i in (0, 1):
        assert np.array_equal(np.concatenate([s[i] for s in model.seen]),
                              np.concatenate([s[i] for s in reference.seen]))
    assert cert.count == ref.count and cert.radii == ref.radii


def test_a_stream_prefix_is_the_same_whatever_the_stopping_point():
    draws = []

    def draw_block(gen, size):
        draws.append(size)
        return None, gen.standard_normal((size, 3))

    stream = NoiseStream(np.random.SeedSequence([0, 7]), draw_block)
    whole = stream.take(1, 0, 3000)[1]
    again = NoiseStream(np.random.SeedSequence([0, 7]), draw_block)
    parts = [again.take(1, a, b)[1] for a, b in [(0, 5), (5, 100), (100, 101), (101, 3000)]]
    assert np.array_equal(np.concatenate(parts), whole)
    other_phase = NoiseStream(np.random.SeedSequence([0, 7]), draw_block).take(0, 0, 10)[1]
    assert not np.array_equal(other_phase, whole[:10])


def test_torch_noise_is_batch_size_independent_too():
    torch = pytest.importorskip("torch")
    batches = {}
    for bs in (5, 512):
        got = []

        def model(tokens, cont, got=got):
            got.append(cont.clone())
            return torch.zeros(len(cont), dtype=torch.long)

        hc.SmoothedClassifier(model, discrete_noise=None, sigma=0.5, batch_size=bs).certify(
            None, torch.zeros(4), n0=10, n=300, random_state=2)
        batches[bs] = torch.cat(got)
    assert torch.equal(batches[5], batches[512])


def test_a_run_made_with_the_old_streams_is_refused_with_the_reason(tmp_path):
    settings = {"n": 100, "seed": 0, "batch_size": 10}
    (tmp_path / "run.json").write_text(json.dumps(settings))
    with pytest.raises(SettingsMismatch, match="other noise streams"):
        prepare_run_dir(tmp_path, {**settings, "stream": STREAM_VERSION})
    v1 = tmp_path / "v1"   # counter-v1: a first block of 4 samples, not 128
    v1.mkdir()
    (v1 / "run.json").write_text(json.dumps({**settings, "stream": "counter-v1"}))
    with pytest.raises(SettingsMismatch, match="other noise streams \\(counter-v1, this version "
                                               "draws counter-v2\\)"):
        prepare_run_dir(v1, {**settings, "stream": STREAM_VERSION})
    fresh = tmp_path / "new"
    prepare_run_dir(fresh, {**settings, "stream": STREAM_VERSION})
    # another batch size resumes: the streams do not depend on it
    prepare_run_dir(fresh, {**settings, "stream": STREAM_VERSION, "batch_size": 999})


# --------------------------------------------------------------------------- sequential


def test_sequential_spends_few_calls_on_a_clear_example_and_records_them():
    model = HalfSpace(3.0)                     # p = 0.75 * Phi(6): clear, far above tau = 0.05
    smooth = smoothed(model)
    cert = smooth.certify(TOKENS, np.zeros(2), sampling="sequential", targets=[(0, 0.25), (0, 0.5)],
                          random_state=1)
    info = cert.settings["sequential"]
    assert cert.model_calls == cert.n[0] == info["looks"][len(info["look_counts"]) - 1] < 200
    assert cert.decisions == {(0, 0.25): "certified", (0, 0.5): "certified"}
    assert cert.settings["stream"]["version"] == STREAM_VERSION
    for (d, r), status in cert.decisions.items():
        assert status == "certified" and cert.largest_budget >= d and cert.radii[d] >= r


class Recorder:
    """A HalfSpace that keeps the labels it returns, in the order of the input's samples
    (``image_only``: x[0] <= b alone, p = Phi(b / s), up to 1)."""

    def __init__(self, b: float, image_only: bool = False):
        self.model, self.labels, self.calls = HalfSpace(b), [], 0
        self.image_only = image_only

    def __call__(self, tokens, cont):
        self.calls += 1
        out = (cont[:, 0] <= self.model.b).astype(int) if self.image_only else \
            self.model(tokens, cont)
        self.labels.append(out)
        return out


@pytest.mark.parametrize("targets", [[(1, 0.5)], [(0, 1.0)], [(0, 0.0), (1, 0.25), (2, 0.5)],
                                     None])
@pytest.mark.parametrize("b", [-0.6, 0.1, 0.35, 0.55, 3.0, "image 0.7", "image 3.0"])
def test_requests_pass_undecidable_looks_yet_every_look_is_looked_at(b, targets):
    """A request runs to the first look at which a target could change status, in one model
    call; the certificate equals that of looking at every look in turn (``run_targets``, fed the
    same labels): the same count at each look, stopping look, bound and decisions."""
    model = Recorder(float(str(b).split()[-1]), image_only=isinstance(b, str))
    cert = smoothed(model, batch_size=100_000).certify(
        TOKENS, np.zeros(2), sampling="sequential", targets=targets, d_max=2, n_max=20_000,
        alpha=0.001, random_state=11)
    info = cert.settings["sequential"]
    labels = np.concatenate(model.labels)
    assert labels.size == cert.model_calls == cert.n[0]
    cs = UnionClopperPearson(info["looks"], alpha=0.001)
    # the model's own labels, look by look; it may not ask past what the engine drew
    every = run_targets(lambda a, z: np.array([np.sum(labels[a:z] == 1)]) if z <= labels.size
                        else pytest.fail("looking at every look needs more samples"),
                        cs, np.asarray(info["p_star"]))
    assert every.samples[0] == cert.n[0] and every.successes[0] == cert.count[0]
    assert every.lower[0] == cert.p_lower
    names = {0: "undecided", 1: "certified", 2: "dropped"}
    assert [names[int(v)] for v in every.status[0]] == info["status"]
    assert info["look_counts"] == [int(np.sum(labels[:n] == 1))
                                   for n in info["looks"][:len(info["look_counts"])]]
    assert model.calls <= len(info["look_counts"])
    if b in (3.0, -0.6, "image 3.0") and targets == [(1, 0.5)]:   # easy: several looks a call
        assert model.calls < len(info["look_counts"])


def sometimes_raises(tokens, x):
    """Flags every sample; raises on any batch holding a sample with x[2] > 0.6 (~12%)."""
    if (x[:, 2] > 0.6).any():
        raise RuntimeError("boom")
    return np.ones(len(x), dtype=int)


def test_the_failed_share_is_checked_at_every_look_a_request_spans(monkeypatch):
    """``max_error_rate`` fails an input at the first look whose failed share passes it, as one
    look at a time would (an inner look of a request included): never a certificate instead."""
    def outcomes():
        sm = hc.SmoothedClassifier(sometimes_raises, discrete_noise=None, sigma=0.5, tau=0.2,
                                   decision="threshold", on_model_error="flag", batch_size=1000)
        out = []
        for rate in (0.1, 0.2):
            sm.max_error_rate = rate
            args = dict(targets=[(0, 0.5)], n_max=2000, alpha=0.001)
            inputs = [(None, np.zeros(3), seed) for seed in range(20)]
            alone = []
            for x_d, x_c, seed in inputs:
                try:
                    alone.append(sm.certify(x_d, x_c, random_state=seed, sampling="sequential",
                                            **args))
                except hc.ModelError as err:
                    alone.append(err)
            batched = LookScheduler(sm, **args, max_batch=64).certify_many(
                inputs, return_exceptions=True)
            for a, b in zip(alone, batched, strict=True):
                assert type(a) is type(b)
                out.append((a.errors, a.calls, str(a)) if isinstance(a, hc.ModelError)
                           else a.to_dict())
                if not isinstance(a, hc.ModelError):
                    assert a.to_dict() == b.to_dict()
                else:
                    assert (a.errors, a.calls, str(a)) == (b.errors, b.calls, str(b))
        return out

    spans = outcomes()
    assert sum(isinstance(o, tuple) for o in spans) >= 5   # several inputs fail, some certify
    assert sum(isinstance(o, dict) for o in spans) >= 5
    # one look at a time: each request ends at the next look
    monkeypatch.setattr(LookRule, "_span_ends",
                        lambda self, tracks: np.array([t.look for t in tracks]))
    _look_rule.cache_clear()
    try:
        assert outcomes() == spans
    finally:
        _look_rule.cache_clear()


def test_labels_are_counted_per_segment_in_one_pass():
    """``ends`` splits the counts of one request at the looks it spans, whatever the batches
    (a batch straddling a look, a segment ending before a piece starts)."""
    labels = np.array([1, 0, 1, 1, -1, 0, 1, 1, 0, 1])
    seen = LabelCounts.of(labels, 2, ends=[3, 7, 10])
    assert seen.segments.tolist() == [[1, 2], [1, 2], [1, 2]]
    assert seen.counts.tolist() == [3, 6] and seen.abstentions == 1
    piece = LabelCounts.of(labels[5:], 2, ends=np.array([3, 7, 10]) - 5)
    assert piece.segments.tolist() == [[0, 0], [1, 1], [1, 2]]
    chunks = iter([labels[:4], labels[4:8], labels[8:]])
    counted = count_labels(lambda t, c: c, lambda b: (None, next(chunks)), 10, batch_size=4,
                           num_classes=2, ends=[3, 7, 10])
    assert counted.segments.tolist() == seen.segments.tolist()
    assert counted.counts.tolist() == [3, 6] and counted.abstentions == 1
    assert counted.segment_errors.tolist() == [0, 0, 0]

    def fragile(tokens, x):   # samples 2 and 8 raise: one failed sample in segments 0 and 2
        if np.isin(x, [2, 8]).any():
            raise RuntimeError("boom")
        return np.zeros(len(x), dtype=int)

    chunks = iter([np.arange(4), np.arange(4, 8), np.arange(8, 10)])
    failed = count_labels(fragile, lambda b: (None, next(chunks)), 10, batch_size=4,
                          num_classes=2, ends=[3, 7, 10])
    assert failed.errors == 2 and failed.segment_errors.tolist() == [1, 0, 1]
    assert failed.segments.tolist() == [[2, 0], [4, 0], [2, 0]]   # failed: ABSTAIN
    with pytest.raises(ValueError, match="ends must be"):
        LabelCounts.of(labels, 2, ends=[3, 7])


def test_sequential_drops_a_hopeless_target_early():
    cert = smoothed(HalfSpace(-3.0)).certify(TOKENS, np.zeros(2), sampling="sequential",
                                             targets=[0.0], random_state=2)
    assert set(cert.decisions.values()) == {"dropped"}
    assert cert.model_calls < 500 and cert.label == ABSTAIN


@pytest.mark.parametrize("b", [0.2, 0.6, 1.2])
def test_conformance_sequential_certificates_hold_under_attack(b):
    """Certify in target mode, attack every certified (d, r) at its strongest (token 0 changed,
    x0 moved by r towards the boundary), and check the claim with a Monte Carlo upper bound."""
    smooth = smoothed(HalfSpace(b))
    targets = [(d, r) for d in (0, 1) for r in (0.0, 0.25, 0.5, 1.0)]
    cert = smooth.certify(TOKENS, np.zeros(2), sampling="sequential", targets=targets,
                          alpha=0.001, random_state=int(b * 10))
    checked = 0
    for (d, r), status in cert.decisions.items():
        if status != "certified":
            continue
        attacked = TOKENS.copy()
        if d:
            attacked[0] = 7                          # the token the model reads
        est = smooth.estimate(attacked, np.array([r, 0.0]), n=20_000, alpha=1e-4,
                              random_state=99)
        assert est.upper >= smooth.tau, ((d, r), est)
        checked += 1
    assert checked >= 1


def test_sequential_decisions_agree_with_a_fixed_run_far_from_the_boundary():
    smooth = smoothed(HalfSpace(1.0))            # p = 0.75 * Phi(2) = 0.733
    seq = smooth.certify(TOKENS, np.zeros(2), sampling="sequential", random_state=3)
    fixed = smooth.certify(TOKENS, np.zeros(2), n=10_000, random_state=3)
    for (d, r), status in seq.decisions.items():
        if status == "certified":
            assert fixed.largest_budget >= d and fixed.radii[d] >= r * 0.9
    assert seq.model_calls < fixed.model_calls


def test_recompute_is_exact_for_sequential_certificates_and_redoes_the_decisions():
    smooth = smoothed(HalfSpace(0.5))
    cert = smooth.certify(TOKENS, np.zeros(2), sampling="sequential", random_state=4)
    same = hc.recompute(cert)
    assert same.p_lower == cert.p_lower and same.radii == cert.radii
    looser = hc.recompute(cert, alpha=0.05)
    assert looser.p_lower >= cert.p_lower
    assert looser.settings["level"] == pytest.approx(0.05 / len(cert.settings["sequential"]["looks"]))
    stricter = hc.recompute(cert, tau=0.5)
    assert all(s in ("certified", "undecided") for s in stricter.decisions.values())
    assert sum(s == "certified" for s in stricter.decisions.values()) <= \
        sum(s == "certified" for s in cert.decisions.values())


def test_frontier_mode_abstains_early_and_otherwise_tracks_the_fixed_frontier():
    hopeless = smoothed(HalfSpace(-4.0)).certify(TOKENS, np.zeros(2), sampling="sequential",
                                                 targets="frontier", random_state=5)
    assert hopeless.label == ABSTAIN and hopeless.model_calls <= 300   # U below tau = 0.05
    smooth = smoothed(HalfSpace(0.5))
    front = smooth.certify(TOKENS, np.zeros(2), sampling="sequential", targets="frontier",
                           random_state=6)
    fixed = smooth.certify(TOKENS, np.zeros(2), n=10_000, random_state=6)
    assert front.settings["sequential"]["mode"] == "frontier"
    assert front.radii[0] >= 0.9 * fixed.radii[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampling="adaptive"), "sampling must be one of"),
    (dict(sampling="sequential", protocol="per_budget"), "protocol must be shared"),
    (dict(sampling="sequential", n_max=0), "n_max"),
    (dict(sampling="sequential", rtol=0), "rtol"),
    (dict(sampling="sequential", targets=[(9, 0.5)]), "budget d must be an integer"),
    (dict(sampling="sequential", targets=[-1.0]), "radius r >= 0"),
    (dict(sampling="sequential", targets="everything"), "targets must be"),
])
def test_sequential_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smoothed(HalfSpace(0.0)).certify(TOKENS, np.zeros(2), **kwargs)


# --------------------------------------------------------------------------- multiclass


class Bands:
    """Three labels by the band of x[0]: 0 below -a, 1 in [-a, a], 2 above a (closed form)."""

    def __init__(self, a: float):
        self.a = a

    def __call__(self, tokens, cont):
        x = cont[:, 0]
        return np.where(x < -self.a, 0, np.where(x <= self.a, 1, 2))


def bands_p(a, x0, sigma):
    low, high = ndtr((-a - x0) / sigma), ndtr((a - x0) / sigma)
    return np.array([low, high - low, 1 - high])


def test_runner_up_rule_certifies_where_half_cannot_and_holds_under_attack():
    """p_A < 1/2 with two weak competitors: only lower(A) > upper(B) can certify."""
    a, sigma = 0.25, 0.5
    p = bands_p(a, 0.0, sigma)
    assert p[1] < 0.5 and p[1] > p[0]
    make = lambda rule: hc.SmoothedClassifier(Bands(a), discrete_noise=None, sigma=sigma,  # noqa: E731
                                              num_classes=3, multiclass_rule=rule)
    runner = make("runner_up").certify(None, np.zeros(2), n=20_000, random_state=0)
    half = make("half").certify(None, np.zeros(2), n=20_000, random_state=0)
    assert half.label == ABSTAIN
    assert runner.label == 1 and runner.radii[0] > 0
    assert runner.settings["multiclass_rule"] == "runner_up" and len(runner.runner_up) == 1
    # Attack: move x0 by the certified radius towards a competitor; A must still beat each.
    r = runner.radii[0]
    smooth = make("runner_up")
    for shift in (r, -r):
        x = np.array([shift, 0.0])
        top = smooth.estimate(None, x, n=50_000, label=1, alpha=1e-4, random_state=1)
        for other in (0, 2):
            rival = smooth.estimate(None, x, n=50_000, label=other, alpha=1e-4, random_state=1)
            assert top.upper >= rival.lower
        exact = bands_p(a, shift, sigma)
        assert exact[1] >= exact[[0, 2]].max()     # and the closed form agrees


def test_runner_up_recompute_and_binary_unchanged():
    smooth = hc.SmoothedClassifier(Bands(0.6), discrete_noise=None, sigma=0.5, num_classes=3)
    cert = smooth.certify(None, np.zeros(2), n=5000, random_state=0)
    again = hc.recompute(cert)
    assert again.radii == cert.radii and again.p_lower == cert.p_lower
    binary = hc.SmoothedClassifier(lambda t, c: (c[:, 0] > -1).astype(int), discrete_noise=None,
                                   sigma=0.5)
    assert binary.certify(None, np.zeros(2), n=500, random_state=0).settings["multiclass_rule"] \
        == "half"
    with pytest.raises(ValueError, match="multiclass_rule"):
        hc.SmoothedClassifier(Bands(0.6), discrete_noise=None, sigma=0.5, num_classes=3,
                              multiclass_rule="top2")
    with pytest.raises(ValueError, match="multiclass_rule='half'"):
        smooth.certify(None, np.zeros(2), sampling="sequential")


# --------------------------------------------------------------------------- command line


def test_cli_sequential_run_records_its_calls_and_draws_the_histogram(tmp_path):
    from hybridcert.cli import main
    from hybridcert.rundir import read_run as load_run

    out = tmp_path / "seq"
    assert main(["certify", "--dataset", "tabular", "--sampling", "sequential", "--n-max",
                 "3000", "--limit", "8", "--out", str(out), "--no-progress"]) == 0
    settings, rows = load_run(out)
    assert settings["sampling"] == "sequential" and settings["stream"] == STREAM_VERSION
    assert all(r["sampling"] == "sequential" for r in rows)
    assert all(r["settings"]["multiclass_rule"] == "half" for r in rows)   # 3 species
    calls = [r["model_calls"] for r in rows]
    assert len(set(calls)) > 1 and max(calls) <= 100 + 3000
    assert all(r["model_calls"] == r["n0"] + r["n"][0] for r in rows)
    assert (out / "model_calls.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](model_calls.png)" in (out / "report.md").read_text()
