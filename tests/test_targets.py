"""`--target D:R` and `certify_dataset(targets=...)`: one question asked, answered, recorded."""

import json

import numpy as np
import pytest

import hybridcert as hc
from hybridcert.cli import main
from hybridcert.noise import UniformSubstitution
from hybridcert.rundir import read_results
from hybridcert.runner import certify_dataset


def test_cli_target_run_records_answers_and_reports_the_question(tmp_path):
    out = tmp_path / "run"
    assert main(["certify", "--target", "1:0.5", "--limit", "12", "--out", str(out),
                 "--no-progress"]) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["sampling"] == "sequential" and settings["targets"] == [[1, 0.5]]
    rows = list(read_results(out / "results.jsonl").values())
    assert len(rows) == 12
    for row in rows:
        info = row["settings"]["sequential"]
        assert info["targets"] == [[1, 0.5]] and info["status"][0] in (
            "certified", "dropped", "undecided")
        # the question decides when sampling stops: far fewer calls than fixed n = 10,000
        assert row["model_calls"] < 10_000
    report = (out / "report.md").read_text()
    assert "## The questions asked" in report and "r = 0.25" not in report
    certified = sum(r["settings"]["sequential"]["status"][0] == "certified"
                    and r["predicted"] == 1 and r["true_label"] == 1 for r in rows)
    unsafe = sum(r["true_label"] == 1 for r in rows)
    assert f"({certified} of {unsafe})" in report
    # what was asked and what it cost: the settings line names the question, not n = 10,000
    assert "sampling = sequential, targets = (1, 0.5), n_max = 100000" in report
    assert "n = 10000" not in report
    assert f"wall time certifying: {sum(r['seconds'] for r in rows):.1f} s" in report


@pytest.mark.parametrize("targets", ["frontier", [0.25, 0.5]])
def test_reports_of_frontier_and_radii_targets_are_written(tmp_path, targets):
    """The settings line formats (d, r) pairs only; the other documented forms are printed."""
    smoothed = hc.SmoothedClassifier(lambda t, x: (np.asarray(x)[:, 0] > .2).astype(np.int64),
                                     discrete_noise=UniformSubstitution(0.1, vocab_size=20),
                                     sigma=0.5)
    examples = (np.tile(np.arange(5), (4, 1)), np.full((4, 2), 0.6), np.ones(4, int))
    out = certify_dataset(smoothed, examples, out=tmp_path / "run", targets=targets, n_max=2000,
                          alpha=0.01, d_max=2, progress=False)
    assert "sampling = sequential" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, flag", [
    (["--target", "1:0.5", "--sampling", "fixed"], "--target"),
    (["--target", "x:0.5"], "--target"),
    (["--target", "1:-2"], "--target"),
    (["--target", "9:0.5", "--d-max", "2"], "--target"),
    (["--sampling", "sequential", "--protocol", "per_budget"], "--protocol"),
])
def test_bad_target_options_exit_2_before_any_work(tmp_path, capsys, argv, flag):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["certify", *argv, "--out", str(out), "--no-progress"])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def _smoothed():
    def keyword(tokens, images):  # flags when token 7 is present
        return (tokens == 7).any(axis=1).astype(int)

    return hc.SmoothedClassifier(keyword, sigma=None, decision="threshold", tau=0.2,
                                 discrete_noise=UniformSubstitution(beta=0.1, vocab_size=20))


def test_certify_dataset_with_targets_equals_certify_one_at_a_time(tmp_path):
    smoothed = _smoothed()
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 20, (6, 8))
    tokens[:4, :3] = 7
    run = certify_dataset(smoothed, (tokens, None, [1, 1, 1, 1, 0, 0]), out=tmp_path / "r",
                          targets=[(1, 0.0), (2, 0.0)], progress=False, report=False, seed=5)
    rows = {r["id"]: r for r in read_results(run / "results.jsonl").values()}
    settings = json.loads((run / "run.json").read_text())
    assert settings["sampling"] == "sequential" and settings["targets"] == [[1, 0.0], [2, 0.0]]
    for i in range(6):
        cert = smoothed.certify(tokens[i], None, sampling="sequential", targets=[(1, 0.0), (2, 0.0)],
                                random_state=np.random.SeedSequence([5, i]))
        assert rows[str(i)]["settings"]["sequential"]["status"] == \
            cert.settings["sequential"]["status"]
        assert rows[str(i)]["count"] == list(cert.count)


@pytest.mark.parametrize("kwargs", [{"targets": [(True, 0.1)]}, {"seed": -1}, {"seed": 1.5},
                                    {"seed": "7"}, {"protocol": "bogus"}, {"max_retries": -1},
                                    {"targets": [(1, 0.1)], "sampling": "fixed"}])
def test_certify_dataset_refuses_bad_options_before_writing(tmp_path, kwargs):
    with pytest.raises(ValueError):
        certify_dataset(_smoothed(), (np.zeros((2, 4), int), None), out=tmp_path / "r",
                        progress=False, report=False, **kwargs)
    assert not (tmp_path / "r").exists()
