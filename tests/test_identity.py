"""The run's identity (issue 20): hashes of the examples, model fingerprints, refused resumes."""

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hybridcert as hc
from bright_model import bright, examples, smoothed_for
from hybridcert.cli import main
from hybridcert.datasets import Split
from hybridcert.identity import file_sha256, model_fingerprint, split_sha256, tree_sha256
from hybridcert.noise import AppendInput
from hybridcert.rundir import SettingsMismatch
from hybridcert.runner import certify_dataset

API = {"n0": 10, "n": 50, "progress": False, "report": False}


def _split(**change):
    rng = np.random.default_rng(0)
    columns = {"ids": ["a", "b", "c"], "x_discrete": rng.integers(0, 50, (3, 6)),
               "x_continuous": rng.random((3, 4, 4)).astype(np.float32),
               "y": np.array([0, 1, 1])}
    return Split(**{**columns, **change})


def _files(root: Path) -> dict:
    """Every file under a run directory and its bytes: what a refused resume must not change."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- split_sha256


def test_the_split_hash_changes_with_one_id_token_pixel_or_label():
    base = _split()
    reference = split_sha256(base)
    tokens = base.x_discrete.copy()
    tokens[1, 2] = (tokens[1, 2] + 1) % 50
    pixels = base.x_continuous.copy()
    pixels[2, 3, 3] = np.nextafter(pixels[2, 3, 3], 2)  # the smallest change of one pixel
    labels = base.y.copy()
    labels[0] = 1
    changed = [_split(ids=["a", "b", "d"]), _split(x_discrete=tokens),
               _split(x_continuous=pixels), _split(y=labels),
               _split(x_continuous=base.x_continuous.astype(np.float64))]  # the dtype too
    hashes = {split_sha256(s) for s in changed}
    assert reference not in hashes and len(hashes) == len(changed)


def test_the_split_hash_ignores_the_order_and_form_of_loading():
    torch = pytest.importorskip("torch", reason="torch tensors as the continuous column")
    base = _split()
    order = [2, 0, 1]
    shuffled = Split(ids=[base.ids[i] for i in order],
                     x_discrete=[base.x_discrete[i] for i in order],  # a list of rows
                     x_continuous=torch.as_tensor(base.x_continuous[order]),  # torch, stacked
                     y=[int(base.y[i]) for i in order])
    assert split_sha256(shuffled) == split_sha256(base)


def test_the_split_hash_covers_append_inputs_texts_and_missing_images():
    def split(trusted, text="hello"):
        return Split(ids=["0", "1"], x_discrete=[AppendInput(trusted), text],
                     x_continuous=[None, b"file bytes"], y=[1, -1])

    reference = split_sha256(split([1, 2, 3]))
    assert split_sha256(split([1, 2, 3])) == reference
    assert split_sha256(split([1, 2, 4])) != reference
    assert split_sha256(split([1, 2, 3], text="hello!")) != reference
    with pytest.raises(TypeError, match="cannot hash an example entry of type object"):
        split_sha256(Split(ids=["0"], x_discrete=[object()], x_continuous=[None], y=[0]))


def test_the_split_hash_is_the_same_in_another_process():
    code = ("import numpy as np; from hybridcert.datasets import Split; "
            "from hybridcert.identity import split_sha256; rng = np.random.default_rng(0); "
            "print(split_sha256(Split(ids=['a', 'b', 'c'], x_discrete=rng.integers(0, 50, (3, 6)),"
            " x_continuous=rng.random((3, 4, 4)).astype(np.float32), y=np.array([0, 1, 1]))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123",
                                          "PYTHONPATH": str(Path(hc.__file__).parents[1])})
    assert out.stdout.strip() == split_sha256(_split())


def test_file_and_folder_hashes(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 3_000_000)
    (tmp_path / "d" / "sub" / "b.txt").write_text("b")
    assert file_sha256(tmp_path / "d" / "a.bin") == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    before = tree_sha256(tmp_path / "d")
    (tmp_path / "d" / "sub" / "b.txt").write_text("c")
    assert tree_sha256(tmp_path / "d") != before


# --------------------------------------------------------------------------- model_fingerprint


def _threshold(level):
    def f(tokens, images):
        return (images.reshape(len(images), -1).mean(axis=1) > level).astype(int)

    return f


def dark(tokens, images):
    return (images.reshape(len(images), -1).mean(axis=1) < 0.5).astype(int)


def test_a_function_is_known_by_its_code_and_closure():
    fp = model_fingerprint(bright)
    assert fp["kind"] == "function" and fp["exact"] and fp["qualname"].endswith(".bright")
    assert model_fingerprint(bright) == fp and json.loads(json.dumps(fp)) == fp
    assert model_fingerprint(dark)["code_sha256"] != fp["code_sha256"]  # one operator differs
    half, third = model_fingerprint(_threshold(0.5)), model_fingerprint(_threshold(0.3))
    assert half["qualname"] == third["qualname"] and half["code_sha256"] != third["code_sha256"]
    assert model_fingerprint(_threshold(0.5)) == half
    state = {"broken": False}

    def flaky(tokens, images):
        return bright(tokens, images) if not state["broken"] else None

    weak = model_fingerprint(flaky)
    state["broken"] = True  # mutable state is not part of the fingerprint, and says so
    assert model_fingerprint(flaky) == weak and not weak["exact"]


def test_named_described_and_unknown_models():
    assert model_fingerprint(bright, name="guard", version=3) == {
        "kind": "named", "name": "guard", "version": "3", "exact": True}
    with pytest.raises(ValueError, match="model_name: expected a non-empty string"):
        model_fingerprint(bright, name="", version="1")

    class Described:
        def describe(self):  # numpy scalars and arrays, as a model may return them
            return {"threshold": np.float32(0.25), "classes": np.int64(2),
                    "vocab": np.arange(5), "forward_batch_size": 64}

        def __call__(self, tokens, images):
            return bright(tokens, images)

    fp = model_fingerprint(Described())
    assert fp["kind"] == "described" and fp["exact"] and "forward_batch_size" not in fp[
        "describe"]
    assert json.loads(json.dumps(fp)) == fp and fp["describe"]["classes"] == 2

    class Opaque:
        def __call__(self, tokens, images):
            return bright(tokens, images)

    assert model_fingerprint(Opaque()) == {"kind": "object", "exact": False,
                                           "qualname": f"{__name__}.{Opaque.__qualname__}"}


def test_an_estimator_by_its_pickle_and_a_module_by_its_weights():
    pytest.importorskip("sklearn")
    torch = pytest.importorskip("torch", reason="a torch module's fingerprint")
    from sklearn.linear_model import LogisticRegression

    from hybridcert.models import SklearnClassifier, TorchClassifier

    rng = np.random.default_rng(0)
    X, y = rng.random((40, 3)), rng.integers(0, 2, 40)
    one = LogisticRegression().fit(X, y)
    fp = model_fingerprint(SklearnClassifier(one))
    assert fp["kind"] == "pickle" and fp["exact"]
    assert model_fingerprint(SklearnClassifier(pickle.loads(pickle.dumps(one)))) == fp
    assert model_fingerprint(SklearnClassifier(LogisticRegression(C=0.01).fit(X, y)))[
        "sha256"] != fp["sha256"]
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    fp = model_fingerprint(TorchClassifier(net))
    assert fp["kind"] == "torch" and fp["module"] == "torch.nn.modules.linear.Linear"
    assert model_fingerprint(net)["sha256"] == fp["sha256"]
    with torch.no_grad():
        net.bias[0] += 1e-3
    assert model_fingerprint(TorchClassifier(net))["sha256"] != fp["sha256"]


# --------------------------------------------------------------------------- refused resumes


def test_certify_dataset_refuses_another_model_or_other_examples(tmp_path):
    out = certify_dataset(smoothed_for(), examples(4), out=tmp_path / "run", **API)
    settings = json.loads((out / "run.json").read_text())
    assert settings["data"]["source"] == "python" and settings["model_fingerprint"]["exact"]
    written = _files(out)
    with pytest.raises(SettingsMismatch, match=r"model: another model \(function "
                       r".*bright code_sha256 \w{8}\.\. recorded, function .*dark code_sha256"):
        certify_dataset(smoothed_for(dark), examples(4), out=out, **API)
    tokens, images, labels = examples(4)
    images[2, 0, 0] = 1 - images[2, 0, 0]
    with pytest.raises(SettingsMismatch, match=r"data: the data differ \(sha256 \w{8}\.\. "
                       r"recorded, \w{8}\.\. now\): another data file, split or filter"):
        certify_dataset(smoothed_for(), (tokens, images, labels), out=out, **API)
    assert _files(out) == written  # nothing written by the refusals
    again = certify_dataset(smoothed_for(), examples(4), out=out, **{**API, "limit": 2})
    assert again == out and _files(out) == written  # the same identity resumes (any --limit)


def test_a_named_model_resumes_under_its_name_and_a_weak_one_is_flagged(tmp_path):
    named = {**API, "model_name": "brightness", "model_version": "1"}
    out = certify_dataset(smoothed_for(bright), examples(4), out=tmp_path / "named", **named)
    certify_dataset(smoothed_for(_threshold(0.5)), examples(4), out=out, **named)  # same name
    with pytest.raises(SettingsMismatch, match="named brightness 2 now"):
        certify_dataset(smoothed_for(bright), examples(4), out=out,
                        **{**named, "model_version": "2"})

    class Opaque:
        def __call__(self, tokens, images):
            return bright(tokens, images)

    out = certify_dataset(smoothed_for(Opaque()), examples(4), out=tmp_path / "weak", **API)
    with pytest.raises(SettingsMismatch, match="give certify_dataset model_name= and "
                       "model_version="):
        certify_dataset(smoothed_for(bright), examples(4), out=out, **API)


def _run(argv, capsys):
    """Run the CLI; its exit code and stderr."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:n_components > n_samples")  # the demo SVM on 33 rows
def test_the_cli_refuses_another_data_file(tmp_path, capsys):
    pytest.importorskip("sklearn")
    fixture = (Path(__file__).with_name("data") / "adult_small.data").read_text()
    (tmp_path / "a.data").write_text(fixture)
    lines = fixture.splitlines()
    (tmp_path / "b.data").write_text("\n".join(lines[::-1]) + "\n")  # its rows in reverse
    out = tmp_path / "run"
    argv = ["certify", "--dataset", "adult", "--n0", "10", "--n", "50", "--limit", "2",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress",
            "--no-report"]
    assert _run([*argv, "--data-path", str(tmp_path / "a.data")], capsys)[0] == 0
    written = _files(out)
    code, err = _run([*argv, "--data-path", str(tmp_path / "b.data")], capsys)
    assert code == 2 and "data: the data differ (sha256" in err and "another data file" in err
    assert "a.data" in err and "b.data" in err  # the path that changed, named
    assert _files(out) == written
    argv = [a if a != "2" else "3" for a in argv]  # another --limit: the same data, resumed
    assert _run([*argv, "--data-path", str(tmp_path / "a.data")], capsys)[0] == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_the_cli_refuses_another_sklearn_pickle(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    data = hc.datasets.load_penguins()
    X = np.hstack([data.train.x_discrete, data.train.x_continuous])
    model, other = tmp_path / "model.pkl", tmp_path / "other.pkl"
    for path, c in ((model, 1.0), (other, 0.01)):
        path.write_bytes(pickle.dumps(LogisticRegression(C=c, max_iter=500).fit(X, data.train.y)))
    out = tmp_path / "run"
    argv = ["certify", "--dataset", "tabular", "--model", f"sklearn:{model}", "--n0", "10",
            "--n", "50", "--limit", "2", "--out", str(out), "--no-progress", "--no-report"]
    assert _run(argv, capsys)[0] == 0
    assert json.loads((out / "run.json").read_text())["model_fingerprint"] == {
        "kind": "sklearn", "path": str(model.resolve()), "sha256": file_sha256(model),
        "exact": True}
    written = _files(out)
    other.replace(model)  # another estimator at the same path
    code, err = _run(argv, capsys)
    assert code == 2 and "model: another model (sklearn" in err
    assert _files(out) == written


def test_the_cli_refuses_another_hateful_memes_split(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the hf: guard that reads Hateful Memes")
    pytest.importorskip("torch", reason="the hf: guard that reads Hateful Memes")
    from PIL import Image

    from hf_tiny import build_tiny_llava

    tiny = build_tiny_llava(tmp_path / "tiny")
    root = tmp_path / "memes"
    (root / "img").mkdir(parents=True)
    for split, texts in (("dev_seen", ["how do i mix the powder", "hello there"]),
                         ("test_seen", ["please store the jar carefully", "hello there"])):
        rows = []
        for i, text in enumerate(texts):  # the same ids in both splits
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(root / "img" / f"{i}.png")
            rows.append({"id": i, "img": f"img/{i}.png", "text": text, "label": 1 - i})
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    argv = ["certify", "--model", f"hf:{tiny}", "--dataset", "hateful-memes", "--data-path",
            str(root), "--n0", "4", "--n", "8", "--batch-size", "8", "--d-max", "1",
            "--limit", "1", "--out", str(out), "--no-progress", "--no-report"]
    assert _run(argv, capsys)[0] == 0
    fingerprint = json.loads((out / "run.json").read_text())["model_fingerprint"]
    assert fingerprint["kind"] == "hf" and fingerprint["path"] == str(tiny.resolve())
    assert fingerprint["weights_exact"] and fingerprint["exact"]
    written = _files(out)
    code, err = _run([*argv, "--split", "test_seen"], capsys)
    assert code == 2 and "data: the data differ (sha256" in err and "'test_seen'" in err
    assert _files(out) == written
    assert _run([*argv, "--split", "dev_seen"], capsys)[0] == 0  # the default, named: resumed
    assert json.loads((out / "run.json").read_text())["data"]["split"] == "dev_seen"
    # From Python, the guard describes itself, and its weights say where they come from.
    from hybridcert.models.hf import HFSafetyGuard

    fp = model_fingerprint(HFSafetyGuard.from_pretrained(tiny, policy="policy: flag it"))
    assert fp["kind"] == "described" and fp["exact"] and json.loads(json.dumps(fp)) == fp
    assert fp["weights"] == {k: fingerprint[k] for k in fp["weights"]}  # the CLI's, the same
    assert "forward_batch_size" not in fp["describe"]  # settles during a run: not identity
