"""The first hour of a new user (issue 24): mistakes refused in one line, exit 2, nothing written."""

import dataclasses
import os

import numpy as np
import pytest

from hybridcert.cli import main
from hybridcert.config import ConfigError, DataConfig, ExecutorConfig, ModelConfig, RunConfig
from hybridcert.registries import MODELS, check_config, register_model


def refused(argv, tmp_path, capsys, command="certify"):
    """Run the CLI; assert exit 2, one line on stderr, no output folder and no trained model.

    Returns the line."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    extra = ["--out", str(out)] if command == "certify" else []
    with pytest.raises(SystemExit) as stop:
        main([command, *extra, *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()  # no run directory, no run.json
    assert not cache.exists()  # nothing trained
    return err.strip()


@pytest.mark.parametrize("argv,option,reason", [
    (["--device", "cuda"], "--device", "no value with --model demo (read by hf:)"),
    (["--device", "tpu"], "--device", "no value with --model demo"),
    (["--dtype", "float16"], "--dtype", "no value with --model demo"),
    (["--policy", "be strict"], "--policy", "no value with --model demo"),
    (["--hf-rule", "generate"], "--hf-rule", "no value with --model demo"),
    (["--hf-task", "text-generation"], "--hf-task", "no value with --model demo"),
    (["--hf-flagged", "INJECTION"], "--hf-flagged", "no value with --model demo"),
    (["--image-size", "64"], "--image-size", "no value with --model demo"),
    (["--data-path", "."], "--data-path", "no value with --dataset mm-interaction, which is "
     "bundled and reads no path"),
    (["--dataset", "tabular", "--data-path", "."], "--data-path", "--dataset tabular"),
    (["--dataset", "tabular", "--split", "train"], "--split", "no value with --dataset tabular"),
    (["--dataset", "tabular", "--kernel", "absorbing"], "--kernel", "categorical substitution"),
    (["--dataset", "tabular", "--attacker-alphabet", "noise"], "--attacker-alphabet",
     "--dataset tabular"),
    (["--dataset", "tabular", "--tau", "0.3"], "--tau", "under the majority rule (--decision "
     "auto with --dataset tabular); read by --decision threshold"),
    (["--decision", "majority", "--target-label", "0"], "--target-label",
     "under the majority rule (--decision majority)"),
    (["--threat-size", "2"], "--threat-size", "no value with --threat l0"),
    (["--threat", "suffix", "--filler", "3"], "--filler", "(read by --threat append)"),
    (["--baseline", "image-only", "--beta", "0.3"], "--beta", "--baseline image-only"),
    (["--baseline", "text-only", "--sigma", "0.25"], "--sigma", "--baseline text-only"),
    (["--workers", "4"], "--workers", "no value with --executor local"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker", "no value with --executor local"),
    (["--model", "hf:org/guard", "--cache-dir", "c"], "--cache-dir", "(read by demo)"),
    (["--model", "hf:org/guard", "--hf-task", "text-classification", "--policy", "p"],
     "--policy", "no value with --hf-task text-classification"),
    (["--model", "hf:org/guard", "--hf-task", "text-generation", "--image-size", "64"],
     "--image-size", "a text guard reads no image"),
])
def test_an_option_the_run_does_not_read_is_refused(argv, option, reason, tmp_path, capsys):
    if "--cache-dir" not in argv:
        argv = [*argv, "--cache-dir", str(tmp_path / "cache")]
    line = refused(argv, tmp_path, capsys)
    assert f"error: {option}: expected no value " in line and reason in line


def test_n_max_without_sequential_sampling_is_refused(tmp_path, capsys):
    line = refused(["--n-max", "500", "--cache-dir", str(tmp_path / "cache")], tmp_path, capsys)
    assert "error: --n-max: expected None with fixed sampling" in line and "got 500" in line


def test_threads_beyond_the_machine_are_refused(tmp_path, capsys):
    cpus = os.cpu_count()
    line = refused(["--threads", str(cpus + 1), "--cache-dir", str(tmp_path / "cache")],
                   tmp_path, capsys)
    assert f"--threads: expected at most {cpus}, the CPUs of this machine" in line
    assert f"got {cpus + 1}" in line


@pytest.mark.parametrize("device,expected", [
    ("tpu", "--device: expected cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("garbage", "--device: expected cpu, cuda, cuda:N or mps, got 'garbage'"),
    ("cuda:x", "--device: expected cpu, cuda, cuda:N or mps"),
    ("meta", "--device: expected cpu, cuda, cuda:N or mps"),
])
def test_an_hf_guard_on_an_unknown_device_is_refused(device, expected, tmp_path, capsys):
    pytest.importorskip("torch", reason="the device is parsed by torch")
    # A hub name that does not exist: the check must come before any download or load.
    line = refused(["--model", "hf:org/guard", "--device", device], tmp_path, capsys)
    assert expected in line


def test_cuda_on_a_machine_without_cuda_is_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="the device is checked by torch")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        line = refused(["--model", "hf:org/guard", "--device", f"cuda:{count}"], tmp_path,
                       capsys)
        assert f"sees {count} CUDA device(s)" in line
        return
    line = refused(["--model", "hf:org/guard", "--device", "cuda"], tmp_path, capsys)
    assert "--device: expected a device this machine has: torch sees no CUDA device" in line
    if torch.version.cuda is None:
        assert "install a CUDA build of torch" in line


def test_float16_off_cuda_is_refused_before_loading(tmp_path, capsys):
    pytest.importorskip("torch", reason="the precision is resolved by torch")
    line = refused(["--model", "hf:org/guard", "--dtype", "float16"], tmp_path, capsys)
    assert "--dtype: expected a precision the device runs" in line


@pytest.mark.parametrize("blocked", ["out", "out/run"])
def test_an_out_that_is_or_lies_below_a_file_is_refused(blocked, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--out", str(tmp_path / blocked), "--cache-dir",
              str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "error: --out: expected a folder for the run" in err
    assert (tmp_path / "out").read_text() == "not a folder" and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--arities", "3", "3", "--vocab-size", "100"],
     "--arities: expected no value with --kernel uniform"),
    (["--kernel", "absorbing", "--arities", "3"], "--arities: expected no value with --kernel "
     "absorbing"),
    (["--kernel", "absorbing", "--vocab-size", "100"],
     "--vocab-size: expected no value with --kernel absorbing"),
    (["--kernel", "categorical", "--arities", "3", "--vocab-size", "100"],
     "--vocab-size: expected no value with --kernel categorical"),
])
def test_radius_refuses_what_its_kernel_does_not_read(argv, expected, tmp_path, capsys):
    line = refused(["--p-lower", "0.99", "--sigma", "0.5", *argv], tmp_path, capsys,
                   command="radius")
    assert expected in line


def test_the_python_api_refuses_the_same_options():
    base = RunConfig(out="unused")
    for config, option in [
        (dataclasses.replace(base, model=ModelConfig(device="cuda")), "--device"),
        (dataclasses.replace(base, data=DataConfig(data_path="/data")), "--data-path"),
        (dataclasses.replace(base, executor=ExecutorConfig(threads=10 * (os.cpu_count() or 1))),
         "--threads"),
    ]:
        with pytest.raises(ConfigError, match=f"^{option}: expected"):
            check_config(config.validate())
    check_config(base.validate())  # the defaults read nothing they were not given


def test_a_model_registered_from_python_gets_every_option(monkeypatch):
    # Its build receives the whole configuration, so it may read --device; nothing is refused.
    monkeypatch.setitem(MODELS, "mine:", MODELS["demo"])
    entry = register_model("mine:", lambda spec: None)
    assert entry.options is None
    config = RunConfig(model=ModelConfig(model="mine:x", device="cuda:3", policy="p"),
                       out="unused")
    assert check_config(config.validate()) is config


def test_the_options_a_run_reads_are_accepted(tmp_path):
    ok = [RunConfig(data=DataConfig(dataset="adult", data_path=str(tmp_path)), out="x"),
          RunConfig(model=ModelConfig(cache_dir=str(tmp_path)), out="x"),
          RunConfig(executor=ExecutorConfig(threads=os.cpu_count() or 1), out="x"),
          RunConfig(executor=ExecutorConfig(executor="ray", workers=4), out="x"),
          RunConfig(model=ModelConfig(model="hf:org/guard", device="cpu:0", dtype="bfloat16"),
                    out="x")]
    for config in ok:
        assert check_config(config.validate()) is config


# --------------------------------------------------------------------------- the demo cache


@pytest.mark.parametrize("damage", [b"", b"not a model at all", None])
def test_a_damaged_cached_table_model_is_trained_again_with_a_warning(damage, tmp_path, caplog):
    pytest.importorskip("sklearn", reason="the table's demo model is a scikit-learn pipeline")
    pytest.importorskip("palmerpenguins", reason="the bundled penguins table")
    from hybridcert.datasets.tabular import load_penguins
    from hybridcert.models import demo

    data = load_penguins(seed=0)
    fit = dict(sigma=0.5, beta=0.25, copies=2, estimator="logreg", cache=tmp_path)
    first = demo.tabular_model(data, **fit)
    [path] = tmp_path.iterdir()
    kept = path.read_bytes()
    # None: a valid pickle of something else (an older layout, another tool's file).
    path.write_bytes(damage if damage is not None else __import__("pickle").dumps({"x": 1}))
    with caplog.at_level("WARNING", logger="hybridcert"):
        again = demo.tabular_model(data, **fit)
    assert f"the cached demo model {path} cannot be read" in caplog.text
    assert "training it again" in caplog.text
    # Trained again from the same seed: the same model as before the damage.
    assert np.array_equal(again(data.test.x_discrete, data.test.x_continuous),
                          first(data.test.x_discrete, data.test.x_continuous))
    assert path.read_bytes() != damage and len(path.read_bytes()) == len(kept)  # replaced
    caplog.clear()
    demo.tabular_model(data, **fit)  # read from the repaired cache: no warning
    assert "cannot be read" not in caplog.text


def test_a_truncated_cached_fusion_model_is_trained_again(tmp_path, caplog):
    torch = pytest.importorskip("torch", reason="the demo fusion network")
    from hybridcert.datasets.mm_interaction import load
    from hybridcert.models import demo

    data = load(seed=0)
    fit = dict(sigma=0.5, beta=0.25, epochs=1, cache=tmp_path)
    demo.mm_interaction_model(data, **fit)
    [path] = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:100])  # a half-written file
    with caplog.at_level("WARNING", logger="hybridcert"):
        model = demo.mm_interaction_model(data, **fit)
    assert f"the cached demo model {path} cannot be read" in caplog.text
    assert model(data.test.x_discrete[:3], data.test.x_continuous[:3]).shape == (3,)
    torch.load(path, weights_only=True)  # replaced by a readable one


# --------------------------------------------------------------------------- Adult files


def _uci_lines(count):
    from hybridcert.datasets.tabular import bundled_adult_text

    return bundled_adult_text("adult.data").splitlines()[:count]


@pytest.mark.parametrize("text,expected", [
    ("", "no rows (an empty file?)"),
    ("\n\n", "no rows (an empty file?)"),
    ("age,workclass\n", "the header lacks the columns"),
    ("relabel", "the income labels must be <=50K or >50K (adult.test's trailing '.' is "
     "allowed), found ['high', 'low']"),
    ("one label", "are labelled <=50K; both <=50K and >50K are needed"),
])
def test_a_bad_adult_file_is_named_in_one_line_before_any_work(text, expected, tmp_path, capsys):
    path = tmp_path / "adult.csv"
    if text == "relabel":  # another income coding: sorted, 'high' would have become label 0
        text = "\n".join(line.replace("<=50K", "low").replace(">50K", "high")
                         for line in _uci_lines(300))
    elif text == "one label":
        text = "\n".join(line for line in _uci_lines(300) if "<=50K" in line)
    path.write_text(text)
    line = refused(["--dataset", "adult", "--data-path", str(path), "--cache-dir",
                    str(tmp_path / "cache")], tmp_path, capsys)
    assert f"error: {path}" in line and expected in line


def test_adult_test_labels_with_a_dot_are_read_as_the_card_says(tmp_path):
    from hybridcert.datasets.tabular import load_adult

    lines = _uci_lines(300)
    dotted = [line + "." if i % 2 else line for i, line in enumerate(lines)]
    (tmp_path / "adult.csv").write_text("\n".join(dotted))
    data = load_adult(tmp_path / "adult.csv")
    assert data.class_names == ["<=50K", ">50K"]
    high = sum(line.endswith(">50K") for line in lines)
    assert int(np.concatenate([data.train.y, data.test.y]).sum()) == high
    assert f"1 = >50K ({high} rows" in data.card


# --------------------------------------------------------------------------- resuming


def test_a_resume_with_other_settings_is_refused_before_a_model_is_trained(tmp_path, capsys):
    import json

    from hybridcert.run import plan

    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    recorded = json.dumps(plan(RunConfig(out=str(out))).settings(), default=str)
    (out / "run.json").write_text(recorded)
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--out", str(out), "--beta", "0.3", "--cache-dir", str(cache)])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "holds results made with other settings (" in err
    assert "'beta': 0.25" in err and "'beta': 0.3" in err   # the kernel's description
    assert not cache.exists()  # no demo model trained for a run that is refused
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert (out / "run.json").read_text() == recorded


def test_the_run_says_how_many_examples_it_certifies_and_what_that_costs(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the table's demo model is a scikit-learn pipeline")
    pytest.importorskip("palmerpenguins", reason="the bundled penguins table")
    argv = ["certify", "--dataset", "tabular", "--n", "50", "--n0", "10", "--no-progress",
            "--no-report", "--cache-dir", str(tmp_path / "cache")]
    assert main([*argv, "--limit", "2", "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert "certifying the first 2 of 100 test examples" in out
    assert "at least n = 50 model calls each (100 or more in all)" in out
    assert main([*argv, "--limit", "2", "--sampling", "sequential", "--n-max", "400",
                 "--out", str(tmp_path / "seq")]) == 0
    assert "up to n_max = 400 model calls each" in capsys.readouterr().out


# --------------------------------------------------------------------------- the docs


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_every_readme_python_block_that_uses_hc_imports_it():
    import re

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:python|py)\n(.*?)```", readme, flags=re.S)
    missing = [b.splitlines()[0] for b in blocks
               if re.search(r"\bhc\.", b) and "import hybridcert as hc" not in b]
    assert blocks and not missing


def test_the_readme_lists_the_figures_experiment_paper_writes():
    import re

    source = (ROOT / "src" / "hybridcert" / "experiments" / "paper.py").read_text()
    written = set(re.findall(r'savefig\(out / "([\w.]+\.png)"\)', source))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("- `hybridcert experiment paper` runs"):
                     readme.index("### The paper's tabular experiment")]
    assert written and set(re.findall(r"`([\w]+\.png)`", section)) == written
    assert f"{len(written)} figures" in section or \
        f"{['no', 'one', 'two', 'three', 'four', 'five'][len(written)]} figures" in section


def test_the_docs_name_every_status_of_a_sequential_question():
    from hybridcert.record import STATUS_NAMES

    readme = (ROOT / "README.md").read_text()
    certificates = (ROOT / "docs" / "certificates.md").read_text()
    for status in STATUS_NAMES.values():
        assert f"`{status}`" in readme and f"*{status}*" in certificates


def test_the_docs_state_cost_and_alpha_as_runs_give_them():
    certificates = (ROOT / "docs" / "certificates.md").read_text()
    assert "about an `alpha`" not in certificates and "at most `alpha`" in certificates
    assert "`n` model calls per example under the threshold rule" in certificates
    running = (ROOT / "docs" / "running.md").read_text()
    readme = (ROOT / "README.md").read_text()
    key = "SeedSequence([seed, example index])"
    assert key in running and key in readme  # the noise keys, described alike
    assert "download.pytorch.org/whl/cu" in readme.split("## What `hybridcert certify` does")[0]
    assert "treat it as flagged" in readme and "`n` forward passes" in readme


def test_a_rule_for_chat_guards_is_refused_once_auto_finds_a_classifier(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the tiny text-classification guard")
    from hf_text_tiny import build_tiny_prompt_guard

    guard = build_tiny_prompt_guard(tmp_path / "guard")
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--model", f"hf:{guard}", "--hf-rule", "generate", "--limit", "1",
              "--out", str(tmp_path / "out")])
    # The guard is loaded to learn its kind (transformers may draw its loading bar first).
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and not (tmp_path / "out").exists()
    assert "--hf-rule: expected no value with a text-classification guard" in last
