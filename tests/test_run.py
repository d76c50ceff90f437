"""The run layer: validation before any work, registries, the results file's rules, the Python API."""

import json
import logging
import pickle
import subprocess
import sys

import numpy as np
import pytest

import hybridcert as hc
from bright_model import bright, examples, smoothed_for
from hybridcert.cli import main
from hybridcert.config import RunConfig
from hybridcert.registries import register_dataset, register_model
from hybridcert.run import plan
from hybridcert.rundir import RunLocked, SettingsMismatch, locked, read_results
from hybridcert.runner import certify_dataset

# the one settings record (RunSettings) of `hybridcert certify`'s defaults; "stream" moved to
# counter-v2 (a first noise block of 128 samples) with issue 22
DEFAULT_RUN_JSON = {
    "alpha": 0.001, "batch_size": 1000, "d_max": None, "dataset": "mm-interaction",
    "decision": "threshold", "gaussian": {"clamp": None, "denoiser": None, "sigma": 0.5},
    "guard": None, "hybridcert": hc.__version__, "image_size": None,
    "kernel": {"attacker_alphabet": "any", "beta": 0.25, "kernel": "uniform",
               "restricted_alphabet": False, "vocab_size": 51},
    "limit": None, "max_error_rate": 0.05, "model": "demo", "multiclass_rule": "half",
    "on_model_error": "raise",
    "n": 10000, "n0": 100, "n_max": None, "num_classes": 2, "protocol": "shared", "rtol": 0.02,
    "sampling": "fixed", "seed": 0, "sigma": 0.5, "stream": "counter-v2", "target_label": 1,
    "targets": None, "tau": 0.05, "threat": {"region": "L0Anywhere"},
}


API = {"n0": 20, "n": 200, "progress": False, "report": False}


def test_the_default_run_json_is_unchanged():
    settings = json.loads(json.dumps(plan(RunConfig()).settings()))
    identity = {k: settings.pop(k) for k in ("data", "model_fingerprint")}  # added by issue 20
    assert settings == DEFAULT_RUN_JSON
    assert identity["data"]["source"] == "mm-interaction" and len(identity["data"]["sha256"]) == 64
    assert identity["model_fingerprint"]["kind"] == "demo"


@pytest.mark.parametrize("argv,message", [
    (["--n", "0"], "--n: expected an integer >= 1, got 0"),
    (["--alpha", "2"], "--alpha: expected a number in the open interval (0, 1), got 2.0"),
    (["--d-max", "100"], "--d-max: expected at most 10, the attackable positions"),
    (["--sigma", "-1"], "--sigma: expected a number > 0, got -1.0"),
    (["--model", "sklearn:/nonexistent.pkl"], "--model: expected sklearn:PATH of an existing"),
    (["--model", "nope:x"], "--model: expected one of demo, sklearn:PATH, hf:PATH"),
    (["--model", "hf:/nonexistent"], "--model: expected hf:NAME_OR_PATH"),
    (["--dataset", "hateful-memes", "--model", "hf:x/y", "--data-path", "/nonexistent"],
     "--data-path (or $HYBRIDCERT_HATEFUL_MEMES): expected an existing folder"),
    (["--threat", "append"], "--threat: expected l0 or suffix: append needs a model"),
    (["--attacker-alphabet", "noise", "--n", "-3"], "--n: expected an integer >= 1, got -3"),
    (["--threat", "suffix", "--threat-size", "11"], "--threat-size: expected at most 10"),
    (["--target-label", "5", "--decision", "threshold"], "--target-label: expected a label"),
])
def test_mistakes_are_one_line_exit_2_before_any_work(argv, message, tmp_path, capsys):
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written
    assert not cache.exists() or not any(cache.iterdir())  # nothing trained


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--sigma"):
        main(["certify", "--sigma", "-1", "--debug", "--out", str(tmp_path)])


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path, capsys):
    with locked(tmp_path / "run"):
        with pytest.raises(RunLocked, match=r"being written by pid \d+ on host"):
            certify_dataset(smoothed_for(), examples(), out=tmp_path / "run", **API)
        # The CLI says the same in one line, exit code 2, after validation.
        with pytest.raises(SystemExit) as stop:
            main(["certify", "--dataset", "tabular", "--n", "50", "--limit", "1", "--out",
                  str(tmp_path / "run")])
        assert stop.value.code == 2 and "being written by pid" in capsys.readouterr().err
    certify_dataset(smoothed_for(), examples(), out=tmp_path / "run", **API)  # released


def test_two_concurrent_processes_never_duplicate_rows(tmp_path):
    here = str(__import__("pathlib").Path(__file__).parent)
    script = "\n".join([
        "import sys, hybridcert as hc",
        f"sys.path.insert(0, {here!r})",
        "from test_run import smoothed_for, examples, API",
        "from hybridcert.rundir import RunLocked",
        "try:",
        f"    hc.certify_dataset(smoothed_for(), examples(30), out={str(tmp_path / 'run')!r},"
        " **{**API, 'n': 3000})",
        "except RunLocked as err:",
        "    print('LOCKED', err)",
    ])
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ids = [json.loads(x)["id"] for x in (tmp_path / "run" / "results.jsonl").read_text()
           .splitlines()]
    assert len(ids) == len(set(ids)) == 30
    # Either the runs overlapped and one was refused, or they ran one after the other.
    assert sum("LOCKED" in o for o in outputs) <= 1


def test_a_corrupt_middle_line_is_quarantined_and_the_rest_kept(tmp_path, caplog):
    out = certify_dataset(smoothed_for(), examples(6), out=tmp_path / "run", **API)
    lines = (out / "results.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40] + "#garbage"
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="hybridcert"):
        assert len(read_results(out / "results.jsonl")) == 5  # reading alone skips, keeps others
    assert "line 3 is corrupt" in caplog.text
    certify_dataset(smoothed_for(), examples(6), out=out, **API)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert [json.loads(x) for x in lines[3:]] == rows[2:5]  # rows after it were not redone
    assert "#garbage" in (out / "results.corrupt.jsonl").read_text()


def test_rows_without_run_json_are_refused(tmp_path):
    out = certify_dataset(smoothed_for(), examples(3), out=tmp_path / "run", **API)
    (out / "run.json").unlink()
    with pytest.raises(SettingsMismatch, match=r"no run\.json"):
        certify_dataset(smoothed_for(), examples(3), out=out, **API)


def test_other_settings_are_refused_through_the_api(tmp_path):
    out = certify_dataset(smoothed_for(), examples(3), out=tmp_path / "run", **API)
    with pytest.raises(SettingsMismatch, match="n: 200 -> 300"):
        certify_dataset(smoothed_for(), examples(3), out=out, **{**API, "n": 300})


def test_every_call_raising_is_a_failed_row_retried_on_resume(tmp_path, caplog):
    state = {"broken": True}

    def flaky(tokens, images):
        if state["broken"]:
            raise RuntimeError("weights not loaded")
        return bright(tokens, images)

    with caplog.at_level(logging.WARNING, logger="hybridcert"):
        out = certify_dataset(smoothed_for(flaky), examples(3), out=tmp_path / "run", **API)
    assert "weights not loaded" in caplog.text  # said as it happens
    rows = list(read_results(out / "results.jsonl").values())
    assert all(r["failed"] for r in rows) and "ModelError" in rows[0]["error"]
    ok = certify_dataset(smoothed_for(), examples(1), out=tmp_path / "ok", **API)
    ok_row = next(iter(read_results(ok / "results.jsonl").values()))
    assert set(rows[0]) - {"radius_d0", "radius_d1", "radius_d2", "radius_d3", "radius_d4",
                           "radius_d5", "radius_d6"} == set(ok_row) - {
        f"radius_d{d}" for d in range(7)}  # one schema
    assert isinstance(rows[0]["settings"]["kernel"], dict) == isinstance(
        ok_row["settings"]["kernel"], dict)
    state["broken"] = False
    certify_dataset(smoothed_for(flaky), examples(3), out=out, **API)
    frame = hc.load_run(out)
    assert len(frame) == 3 and frame["id"].is_unique and not frame["failed"].any()
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_a_model_that_always_raises_makes_the_cli_fail(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    data = hc.datasets.load_penguins()
    # Fitted on 5 columns, while the table gives 3 codes and 4 numbers: every call raises.
    assert data.train.x_discrete.shape[1] + data.train.x_continuous.shape[1] == 7
    five = np.hstack([data.train.x_discrete[:, :1], data.train.x_continuous])
    narrow = LogisticRegression(max_iter=500).fit(five, data.train.y)
    path = tmp_path / "narrow.pkl"
    path.write_bytes(pickle.dumps(narrow))
    code = main(["certify", "--dataset", "tabular", "--model", f"sklearn:{path}", "--n", "100",
                 "--n0", "10", "--limit", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "the base classifier raised" in err  # as it happens
    assert "2 example(s) failed" in err and "ModelError" in err and "features" in err
    rows = hc.load_run(tmp_path / "run")
    assert rows["failed"].all() and len(rows) == 2


def test_a_table_estimator_fitted_on_other_column_names_is_refused(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LogisticRegression

    data = hc.datasets.load_penguins()
    frame = pd.DataFrame(np.hstack([data.train.x_discrete, data.train.x_continuous]),
                         columns=[f"column{i}" for i in range(7)])
    path = tmp_path / "by_name.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression(max_iter=500).fit(frame, data.train.y)))
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--dataset", "tabular", "--model", f"sklearn:{path}", "--n", "100",
              "--limit", "2", "--out", str(tmp_path / "run"), "--no-progress"])
    assert stop.value.code == 2 and "fitted on columns" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_registries_take_a_users_data_and_model(tmp_path):
    from hybridcert.config import DataConfig, EstimationConfig, ModelConfig
    from hybridcert.datasets import Split
    from hybridcert.registries import Task
    from hybridcert.run import certify_run

    tokens, images, labels = examples(4)
    split = Split(ids=[f"u{i}" for i in range(4)], x_discrete=tokens, x_continuous=images,
                  y=labels)
    from hybridcert.registries import DATA_SOURCES, MODELS

    register_dataset("my-images", lambda config: Task(split=split, num_classes=2, vocab_size=50))
    register_model("mine", lambda spec: bright)
    config = RunConfig(data=DataConfig(dataset="my-images"), model=ModelConfig(model="mine"),
                       estimation=EstimationConfig(n0=20, n=200), out=str(tmp_path / "run"))
    try:
        out = certify_run(config)
    finally:
        DATA_SOURCES.pop("my-images")
        MODELS.pop("mine")
    frame = hc.load_run(out)
    assert sorted(frame["id"]) == ["u0", "u1", "u2", "u3"] and frame.attrs["settings"][
        "model"] == "mine"
    assert not frame["failed"].any() and (frame["correct"] | frame["abstain"]).all()


def test_the_api_writes_the_report_and_resumes(tmp_path):
    tokens, images, labels = examples(4)
    out = certify_dataset(smoothed_for(), (tokens, images, labels), out=tmp_path / "run",
                          n0=20, n=200, progress=False, limit=2)
    assert (out / "report.md").exists() and len(hc.load_run(out)) == 2
    certify_dataset(smoothed_for(), (tokens, images, labels), out=out, n0=20, n=200,
                    progress=False)
    assert len(hc.load_run(out)) == 4
    with pytest.raises(TypeError, match="examples must be"):
        certify_dataset(smoothed_for(), 42, out=tmp_path / "bad", **API)
    with pytest.raises(ValueError, match="y has 3 entries, expected 4"):
        certify_dataset(smoothed_for(), (tokens, images, labels[:3]), out=tmp_path / "bad", **API)


def test_threads_fit_the_cores_this_process_gets():
    torch = pytest.importorskip("torch")
    import os

    from hybridcert.run import set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        chosen = set_threads(None)
        assert 1 <= chosen <= len(os.sched_getaffinity(0)) and torch.get_num_threads() == chosen
    finally:
        torch.set_num_threads(before)
