"""The main job: resumable JSON Lines, per-example seeds, settings guard, crash and restart."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from hybridcert.cli import main
from hybridcert.datasets import load_dataset
from hybridcert.models import demo
from hybridcert.noise import UniformSubstitution
from hybridcert.rundir import SettingsMismatch, read_results
from hybridcert.runner import certify_split
from hybridcert.smoothing import SmoothedClassifier
from hybridcert.spec import EstimationSpec

TIMING = {"seconds"}


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("mm-interaction")
    model = demo.mm_interaction_model(data, sigma=0.5, beta=0.25, epochs=5)
    smooth = SmoothedClassifier(model, discrete_noise=UniformSubstitution(0.25, data.vocab_size),
                                sigma=0.5, decision="threshold", tau=0.05, batch_size=500)
    settings = {"dataset": "mm-interaction", "n": 400, "alpha": 0.01, "seed": 7}
    return data, smooth, settings


def run(setup, out, limit, **extra):
    data, smooth, settings = setup
    # Like the CLI, record the limit among the settings: it may differ between runs.
    return certify_split(smooth, data.test, out, {**settings, **extra, "limit": limit},
                         EstimationSpec(n0=50, n=400, alpha=0.01, d_max=3, seed=7), limit=limit,
                         progress=False)


def rows_without_timing(path):
    return {k: {f: v for f, v in row.items() if f not in TIMING}
            for k, row in read_results(path / "results.jsonl").items()}


def test_rows_are_written_and_pandas_reads_them(setup, tmp_path):
    out = run(setup, tmp_path / "run", limit=5)
    frame = pd.read_json(out / "results.jsonl", lines=True)
    assert len(frame) == 5 and frame["id"].is_unique
    for column in ("id", "true_label", "predicted", "count", "p_lower", "radius", "radius_d0",
                   "largest_budget", "model_calls", "seconds", "settings"):
        assert column in frame.columns
    assert (frame["model_calls"] == 400).all()  # threshold rule: no selection samples
    assert json.loads((out / "run.json").read_text())["seed"] == 7


def test_shared_clock_splits_each_interval_among_the_examples_in_flight(monkeypatch):
    """Shares sum to the elapsed time; time before the first entry goes to the first example."""
    from hybridcert import runner

    now = [0.0]
    monkeypatch.setattr(runner.time, "perf_counter", lambda: now[0])
    clock = runner.SharedClock()
    now[0] = 0.5
    a = clock.enter()          # a: 0.5 unclaimed, then alone until 1.5
    now[0] = 1.5
    b = clock.enter()          # a and b share 1.5 .. 3.5
    now[0] = 3.5
    share_a = clock.leave(a)
    now[0] = 4.0               # b alone
    share_b = clock.leave(b)
    assert share_a == pytest.approx(0.5 + 1.0 + 1.0, abs=1e-12)
    assert share_b == pytest.approx(1.0 + 0.5, abs=1e-12)
    assert share_a + share_b == pytest.approx(4.0, abs=1e-12)


def test_sequential_rows_seconds_sum_to_at_most_the_wall_time(setup, tmp_path):
    """Batched examples overlap; their rows' seconds are shares, not overlapping spans."""
    data, smooth, settings = setup
    spec = EstimationSpec(alpha=0.01, d_max=1, seed=7, sampling="sequential", n_max=4000,
                          targets=((1, 0.25),))
    start = time.perf_counter()
    out = certify_split(smooth, data.test, tmp_path / "seq", {**settings, "limit": 12}, spec,
                        limit=12, progress=False)
    wall = time.perf_counter() - start
    seconds = [row["seconds"] for row in read_results(out / "results.jsonl").values()]
    assert len(seconds) == 12 and min(seconds) > 0
    assert sum(seconds) <= wall   # 12 examples in flight at once: their spans would sum to ~12x


def test_resume_after_interruption_equals_an_uninterrupted_run(setup, tmp_path):
    whole = run(setup, tmp_path / "whole", limit=8)
    part = run(setup, tmp_path / "part", limit=3)
    # A crash mid-write leaves a torn line: it must be discarded and redone, not kept.
    with (part / "results.jsonl").open("a") as fh:
        fh.write('{"id": "mm-torn", "true_la')
    resumed = run(setup, tmp_path / "part", limit=8)
    assert rows_without_timing(resumed) == rows_without_timing(whole)
    lines = (resumed / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(x)["id"] for x in lines}) == 8


def test_each_example_has_its_own_stream(setup, tmp_path):
    data, smooth, _settings = setup
    first = rows_without_timing(run(setup, tmp_path / "a", limit=4))
    # The same example certified alone, in another run directory, gives the same numbers.
    fresh = SmoothedClassifier(smooth.base_classifier, discrete_noise=smooth.discrete_noise,
                               sigma=0.5, decision="threshold", tau=0.05, batch_size=500)
    from hybridcert.runner import example_seed

    cert = fresh.certify(data.test.x_discrete[2], data.test.x_continuous[2], n0=50, n=400,
                         alpha=0.01, d_max=3, random_state=example_seed(7, 2))
    assert list(cert.radii) == first[data.test.ids[2]]["radius"]


def test_other_settings_are_refused_but_a_larger_limit_extends(setup, tmp_path):
    run(setup, tmp_path / "run", limit=2)
    with pytest.raises(SettingsMismatch, match="n: 400 -> 999"):
        run(setup, tmp_path / "run", limit=2, n=999)
    with pytest.raises(SettingsMismatch, match="kernel"):
        run(setup, tmp_path / "run", limit=2, kernel="absorbing")
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 2
    run(setup, tmp_path / "run", limit=3)
    assert len(read_results(tmp_path / "run" / "results.jsonl")) == 3


@pytest.mark.slow
def test_cli_killed_mid_run_then_rerun(tmp_path):
    out = tmp_path / "cli"
    argv = [sys.executable, "-m", "hybridcert.cli", "certify", "--n", "3000", "--n0", "20",
            "--limit", "40", "--out", str(out), "--no-report", "--no-progress"]
    env = dict(os.environ)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 5:
            break
        if proc.poll() is not None:
            pytest.fail(f"certify ended early: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_rows = len(read_results(results))
    assert 5 <= killed_rows < 40
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    rows = results.read_text().splitlines()
    ids = [json.loads(r)["id"] for r in rows]
    assert len(ids) == 40 and len(set(ids)) == 40
    # Same numbers as an uninterrupted run of the same command.
    clean = tmp_path / "clean"
    assert main(["certify", "--n", "3000", "--n0", "20", "--limit", "40", "--out", str(clean),
                 "--no-report", "--no-progress"]) == 0
    assert rows_without_timing(out) == rows_without_timing(clean)
    # Other settings in the same directory: a clear error, exit code 2.
    other = subprocess.run([*argv[:-2], "--sigma", "0.25", "--no-progress"], env=env,
                           capture_output=True, text=True)
    assert other.returncode == 2 and "other settings" in other.stderr and "sigma" in other.stderr
