"""The estimation spec: checked once, declaratively; it travels whole; one settings record."""

import json
from pathlib import Path

import numpy as np
import pytest

import hybridcert as hc
from hybridcert import streams
from hybridcert._validation import Interval, Options, ParameterError, validate_params
from hybridcert.cli import build_parser, main
from hybridcert.config import ConfigError, RunConfig
from hybridcert.noise import UniformSubstitution
from hybridcert.rundir import SettingsMismatch, read_results
from hybridcert.runner import certify_dataset, example_seed
from hybridcert.spec import EstimationSpec

GOLDEN = Path(__file__).parent / "data" / "rows_before_spec.json"


# --------------------------------------------------------------------------- the constraints


@pytest.mark.parametrize("kwargs, name, expected", [
    (dict(seed=-1), "seed", "an integer >= 0"),
    (dict(seed=1.5), "seed", "an integer >= 0"),
    (dict(seed="7"), "seed", "an integer >= 0"),
    (dict(seed=True), "seed", "an integer >= 0"),
    (dict(n=0), "n", "an integer >= 1"),
    (dict(n0=np.float64(3)), "n0", "an integer >= 1"),
    (dict(alpha=0.0), "alpha", "a number in the open interval (0, 1)"),
    (dict(alpha=float("nan")), "alpha", "a number in the open interval (0, 1)"),
    (dict(d_max=-1), "d_max", "an integer >= 0 or None"),
    (dict(protocol="bogus"), "protocol", "one of shared, per_budget"),
    (dict(sampling="adaptive"), "sampling", "one of fixed, sequential or None"),
    (dict(batch_size=0), "batch_size", "an integer >= 1 or one of auto or None"),
    (dict(rtol=0), "rtol", "a number > 0"),
    (dict(targets=[(True, 0.1)]), "targets", "an integer budget d >= 0"),
    (dict(targets=[(1, float("inf"))]), "targets", "a finite radius r >= 0"),
    (dict(targets=[]), "targets", "a non-empty sequence"),
    (dict(targets="everything"), "targets", "'frontier'"),
    # the rules between fields
    (dict(sampling="sequential", protocol="per_budget"), "protocol",
     "shared with sequential sampling"),
    (dict(targets=[(1, 0.5)], protocol="per_budget"), "protocol", "shared with sequential"),
    (dict(sampling="fixed", targets=[(1, 0.5)]), "targets", "None with sampling='fixed'"),
    (dict(n_max=100), "n_max", "None with fixed sampling"),
    (dict(targets=[(3, 0.5)], d_max=2), "targets", "budgets d at most d_max = 2"),
])
def test_every_bad_value_is_refused_with_its_name_and_range(kwargs, name, expected):
    with pytest.raises(ParameterError) as caught:
        EstimationSpec(**kwargs)
    assert caught.value.name == name and expected in caught.value.expected
    assert str(caught.value).startswith(f"{name} must be ")


def test_a_spec_holds_plain_json_types_and_resolves_its_sampling():
    spec = EstimationSpec(n=np.int64(500), alpha=np.float32(0.01),
                          targets=[(np.int64(1), np.float32(0.5))])
    assert type(spec.n) is int and type(spec.alpha) is float and spec.targets == ((1, 0.5),)
    assert spec.resolved_sampling == "sequential" and spec.resolved_n_max == 100_000
    assert EstimationSpec().resolved_n_max is None
    record = spec.to_dict()
    assert json.loads(json.dumps(record)) == record and record["targets"] == [[1, 0.5]]
    with pytest.raises(ParameterError, match="n must be"):
        spec.replace(n=0)   # a copy is checked again


def test_constraint_objects_say_their_range():
    import numbers

    assert str(Interval(numbers.Real, 0, 1, closed="neither")) == \
        "a number in the open interval (0, 1)"
    assert str(Interval(numbers.Integral, 1, None, closed="left")) == "an integer >= 1"
    assert not Interval(numbers.Real, 0, None, closed="left").is_satisfied_by(float("inf"))
    assert not Options(("auto",)).is_satisfied_by(True)
    with pytest.raises(ParameterError, match="x must be one of a, b or None, got 'c'"):
        validate_params({"x": "c"}, {"x": [Options(("a", "b")), None]})


@pytest.mark.parametrize("argv, message", [
    (["--sampling", "sequential", "--protocol", "per_budget"],
     "--protocol: expected shared with sequential sampling"),
    (["--n-max", "100"], "--n-max: expected None with fixed sampling"),
    (["--target", "3:0.5", "--d-max", "2"], "--target: expected budgets d at most d_max = 2"),
    (["--seed", "-1"], "--seed: expected an integer >= 0"),
    (["--gpus-per-worker", "nan"], "--gpus-per-worker: expected a finite number >= 0"),
    (["--gpus-per-worker", "inf"], "--gpus-per-worker: expected a finite number >= 0"),
    (["--batch-size", "auto"], "--batch-size: expected an integer (--batch-size auto applies"),
])
def test_the_command_line_names_the_flag_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["certify", *argv, "--limit", "2", "--out", str(out), "--no-progress"])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_config_error_is_the_flag_of_a_parameter_error():
    args = build_parser().parse_args(["certify", "--alpha", "2"])
    with pytest.raises(ConfigError, match=r"^--alpha: expected a number in the open interval "):
        RunConfig.from_args(args)


# --------------------------------------------------------------------------- certify_dataset


def model(tokens, images):
    score = images.reshape(len(images), -1).mean(axis=1) + \
        0.05 * (np.asarray(tokens) < 10).sum(axis=1)
    return (score > 0.5).astype(int)


def data():
    rng = np.random.default_rng(3)
    images = rng.random((5, 4, 4)).astype(np.float32)
    tokens = rng.integers(0, 50, (5, 6))
    return tokens, images, model(tokens, images)


def smoothed_for(decision="threshold", base=model):
    return hc.SmoothedClassifier(base, sigma=0.25, decision=decision,
                                 tau=0.2 if decision == "threshold" else None,
                                 discrete_noise=UniformSubstitution(beta=0.5, vocab_size=50),
                                 batch_size=64)


QUIET = {"progress": False, "report": False}


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(seed=1.5), "seed must be an integer >= 0"),
    (dict(seed="7"), "seed must be an integer >= 0"),
    (dict(protocol="bogus"), "protocol must be one of shared, per_budget"),
    (dict(d_max=7), "d_max must be at most 6, the attackable positions"),
    (dict(max_retries=-1), "max_retries must be an integer >= 0"),
    (dict(limit=0), "limit must be an integer >= 1"),
    (dict(targets=[(True, 0.1)]), "targets must be"),
    (dict(n_max=100), "n_max must be None with fixed sampling"),
])
def test_certify_dataset_refuses_before_writing_anything(kwargs, match, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        certify_dataset(smoothed_for(), data(), out=out, n=50, **QUIET, **kwargs)
    assert not out.exists()


def test_a_description_json_cannot_hold_is_refused_before_writing(tmp_path):
    class Described:
        def __call__(self, tokens, images):
            return model(tokens, images)

        def __init__(self, extra):
            self.extra = extra

        def describe(self):
            return {"threshold": np.float32(0.5), "extra": self.extra}

    # numpy scalars are written as the numbers they hold
    out = certify_dataset(smoothed_for(base=Described(np.int64(3))), data(), out=tmp_path / "ok",
                          n=50, **QUIET)
    row = next(iter(read_results(out / "results.jsonl").values()))
    assert row["settings"]["base_classifier"] == {"threshold": 0.5, "extra": 3}
    with pytest.raises(ValueError, match=r"base_classifier.describe\(\)\['extra'\] is a object"):
        certify_dataset(smoothed_for(base=Described(object())), data(), out=tmp_path / "bad",
                        n=50, **QUIET)
    assert not (tmp_path / "bad").exists()


def test_certify_dataset_sequential_with_a_target(tmp_path):
    smoothed = smoothed_for()
    tokens, images, labels = data()
    out = certify_dataset(smoothed, (tokens, images, labels), out=tmp_path / "run",
                          targets=[(1, 0.25)], n_max=5000, seed=4, **QUIET)
    settings = json.loads((out / "run.json").read_text())
    assert settings["sampling"] == "sequential" and settings["targets"] == [[1, 0.25]]
    assert settings["n_max"] == 5000
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 5
    for i in range(5):
        alone = smoothed.certify(tokens[i], images[i], targets=[(1, 0.25)], n_max=5000,
                                 random_state=example_seed(4, i))
        row = rows[str(i)]
        assert row["sampling"] == "sequential" and row["model_calls"] == alone.model_calls
        assert row["p_lower"] == alone.p_lower and row["radius"] == list(alone.radii)
        assert row["settings"]["sequential"] == json.loads(json.dumps(alone.settings["sequential"]))


def golden_rows() -> dict:
    """Rows of four small runs, as ``tests/data/rows_before_spec.json`` recorded them with the
    code before the estimation spec (commit bb1390f), without the timing field."""
    runs = {
        "fixed": ("majority", dict(n0=20, n=200)),
        "per_budget": ("majority", dict(n0=20, n=200, d_max=2, protocol="per_budget")),
        "target": ("threshold", dict(targets=[(1, 0.25)], n_max=5000, seed=4)),
        "grid": ("threshold", dict(sampling="sequential", n_max=2000, d_max=2)),
    }
    out = {}
    for name, (decision, kwargs) in runs.items():
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            certify_dataset(smoothed_for(decision), data(), out=folder, **QUIET, **kwargs)
            out[name] = {k: {f: v for f, v in row.items() if f != "seconds"}
                         for k, row in read_results(Path(folder) / "results.jsonl").items()}
    return out


def test_rows_are_bit_identical_to_those_before_the_spec(monkeypatch):
    """Every field equal, but the thresholds p*(d, r) that sequential rows record: found by a
    bracketing search since (sequential.certification_thresholds), never below the recorded
    bisection's and within 2e-12 of them (a 1e-12 relative margin); no decision, bound or
    count moved. The settings gained the model-error policy since (``on_model_error``,
    ``max_error_rate``).

    The rows were recorded with the streams of counter-v1, whose first block held 4 samples;
    counter-v2 changed that size alone (128), so it is patched back here. Sequential rows hold
    since their requests run over the looks that cannot decide (``LookRule.span``): the same
    counts at every look, the same stopping look."""
    monkeypatch.setattr(streams, "_FIRST_BLOCK", 4)
    monkeypatch.setattr(streams, "STREAM_VERSION", "counter-v1")
    recorded = json.loads(GOLDEN.read_text())
    now = json.loads(json.dumps(golden_rows()))
    for run, rows in now.items():
        for key, row in rows.items():
            old = recorded[run][key]
            assert row["settings"].pop("on_model_error") == "raise"
            assert row["settings"].pop("max_error_rate") == 0.05
            seq_now, seq_old = (r["settings"].get("sequential") or {} for r in (row, old))
            p_now, p_old = (np.array(q.pop("p_star", []), dtype=float) for q in (seq_now, seq_old))
            assert p_now.shape == p_old.shape and np.all(p_now >= p_old)
            np.testing.assert_allclose(p_now, p_old, rtol=2e-12, atol=0)
            assert row == old


# --------------------------------------------------------------------------- one settings record


@pytest.mark.slow   # trains the demo model once per session (about 15 s)
def test_the_cli_and_certify_dataset_write_the_same_run_json_and_rows(tmp_path):
    from hybridcert.run import plan

    options = ["--target", "1:0.5", "--n-max", "2000", "--limit", "3", "--no-progress",
               "--no-report"]
    config = RunConfig.from_args(build_parser().parse_args(
        ["certify", *options, "--out", str(tmp_path / "cli")]))
    run = plan(config)
    api = certify_dataset(run.builder(), run.split, out=tmp_path / "api", name="mm-interaction",
                          spec=config.estimation, limit=3, **QUIET)
    assert main(["certify", *options, "--out", str(tmp_path / "cli")]) == 0
    cli, ours = (json.loads((d / "run.json").read_text()) for d in (tmp_path / "cli", api))
    identity = {"model", "data", "model_fingerprint", "hybridcert"}
    assert sorted(set(cli) - identity) == sorted(set(ours) - identity)
    for key in set(cli) - identity:
        assert cli[key] == ours[key], key
    assert isinstance(cli["kernel"], dict) and isinstance(cli["threat"], dict)
    cli_rows, api_rows = (read_results(d / "results.jsonl") for d in (tmp_path / "cli", api))
    assert sorted(cli_rows) == sorted(api_rows) and len(cli_rows) == 3
    for key, row in cli_rows.items():
        for name, value in row["settings"].items():
            assert api_rows[key]["settings"][name] == value, (key, name)
        assert {k: v for k, v in row.items() if k != "seconds"} == \
            {k: v for k, v in api_rows[key].items() if k != "seconds"}


def test_a_resume_with_other_settings_is_refused_before_the_model_is_built(tmp_path,
                                                                            monkeypatch):
    from hybridcert.run import SmoothedBuilder, certify_run, plan

    out = tmp_path / "run"
    first = RunConfig.from_args(build_parser().parse_args(
        ["certify", "--n", "300", "--limit", "2", "--out", str(out)]))
    out.mkdir()
    (out / "run.json").write_text(json.dumps(plan(first).settings()))
    built = []
    monkeypatch.setattr(SmoothedBuilder, "__call__", lambda self: built.append(1))
    other = RunConfig.from_args(build_parser().parse_args(
        ["certify", "--n", "400", "--limit", "2", "--out", str(out), "--no-progress"]))
    with pytest.raises(SettingsMismatch, match="n: 300 -> 400"):
        certify_run(other)
    assert built == [] and not (out / "results.jsonl").exists()


def test_an_actor_certifies_its_chunk_through_the_scheduler():
    from hybridcert.distributed import _Worker
    from hybridcert.runner import run_one

    calls = []

    def counted(tokens, images):
        calls.append(len(images))
        return model(tokens, images)

    tokens, images, labels = data()
    spec = EstimationSpec(targets=[(1, 0.25)], n_max=3000, seed=2)
    worker = _Worker(lambda: smoothed_for(base=counted))
    indices = [4, 1, 3]   # a chunk: the run's indices key the noise streams
    results, settings = worker.certify(indices, [f"e{i}" for i in indices],
                                       [int(labels[i]) for i in indices],
                                       [tokens[i] for i in indices],
                                       [images[i] for i in indices], spec)
    batched_calls = len(calls)
    assert settings["sampling"] == "sequential"
    alone = smoothed_for(base=counted)
    calls.clear()
    for (kind, row), i in zip(results, indices, strict=True):
        assert kind == "row"
        expected = run_one(alone, i, f"e{i}", int(labels[i]), tokens[i], images[i], spec,
                           start=0.0)
        assert {k: v for k, v in row.items() if k != "seconds"} == \
            {k: v for k, v in expected.items() if k != "seconds"}
    assert batched_calls < len(calls)   # the looks of the chunk shared model batches
