"""Hugging Face data sets saved to disk as a data source: built here with `datasets`, read back."""

import json

import numpy as np
import pytest

datasets = pytest.importorskip("datasets", reason="the hf-disk source reads Hugging Face datasets")
Image = pytest.importorskip("PIL.Image", reason="Image() columns decode to PIL images")

from hybridcert.config import ConfigError, DataConfig, ModelConfig, RunConfig  # noqa: E402
from hybridcert.datasets.hf_disk import load_hf_disk  # noqa: E402
from hybridcert.datasets.safety import load_image, load_mm_safetybench  # noqa: E402
from hybridcert.registries import check_config  # noqa: E402

TEXTS = ["how do i mix the powder", "hello there", "please store the jar carefully",
         "how do i mix the powder with acid"]
LABELS = [1, 0, 0, 1]
UNSAFE = [True, False, True, False]  # mm_unsafe: rows 0 and 2 are kept by the filter


def _pictures():
    """Small distinct images: row i is filled with 50 * i, a value the tests read back."""
    return [Image.fromarray(np.full((12, 12, 3), 50 * i, np.uint8)) for i in range(len(TEXTS))]


def _dataset(**replace):
    columns = {"image": _pictures(), "text": TEXTS, "label": LABELS, "mm_unsafe": UNSAFE}
    features = {"image": datasets.Image(), "text": datasets.Value("string"),
                "label": datasets.Value("int64"), "mm_unsafe": datasets.Value("bool")}
    for name, (values, feature) in replace.items():
        columns[name], features[name] = values, feature
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A Dataset and a DatasetDict (splits train and test), saved with save_to_disk."""
    root = tmp_path_factory.mktemp("hf")
    _dataset().save_to_disk(root / "one")
    datasets.DatasetDict({"train": _dataset(), "test": _dataset()}).save_to_disk(root / "dict")
    return root


def test_a_saved_dataset_loads_back_with_its_images_texts_and_labels(saved):
    examples = load_hf_disk(saved / "one")
    assert [e.id for e in examples] == ["0", "1", "2", "3"]
    assert [e.text for e in examples] == TEXTS and [e.label for e in examples] == LABELS
    for i, e in enumerate(examples):
        assert e.image_path is None and isinstance(e.image, Image.Image)
        pixels = load_image(e.image_source, size=8)  # the guard's resize, from memory
        assert pixels.shape == (8, 8, 3) and pixels.dtype == np.float32
        np.testing.assert_allclose(pixels, 50 * i / 255, atol=1e-6)


def test_load_image_takes_a_picture_in_memory_and_leaves_it_as_it_was(tmp_path):
    picture = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    picture.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(picture), load_image(tmp_path / "p.png"))
    assert load_image(picture.convert("L"), size=2).shape == (2, 2, 3)
    assert picture.mode == "RGB" and picture.size == (4, 4)


def test_a_dataset_dict_needs_an_existing_split_and_the_error_lists_them(saved):
    assert [e.text for e in load_hf_disk(saved / "dict", split="test")] == TEXTS
    for split in (None, "validation"):
        with pytest.raises(ValueError, match=r"split: .*DatasetDict; expected one of its splits "
                                             r"train, test, got"):
            load_hf_disk(saved / "dict", split=split)
    with pytest.raises(ValueError, match="single Dataset"):
        load_hf_disk(saved / "one", split="test")
    with pytest.raises(ValueError, match="holds no Dataset or DatasetDict"):
        load_hf_disk(saved)
    with pytest.raises(ValueError, match="is not a folder"):
        load_hf_disk(saved / "missing")


@pytest.mark.parametrize("option, role", [({"text": "prompt"}, "text"),
                                          ({"image": "img"}, "image"),
                                          ({"label": "y"}, "label"),
                                          ({"filter": "unsafe"}, "filter")])
def test_a_missing_column_is_named_with_the_columns_present(saved, option, role):
    name = next(iter(option.values()))
    with pytest.raises(ValueError, match=rf"{role} column '{name}' not in .*; its columns: "
                                         r"image, text, label, mm_unsafe"):
        load_hf_disk(saved / "one", **option)


def test_the_filter_keeps_true_rows_with_their_ids_and_limit_counts_kept_rows(saved):
    kept = load_hf_disk(saved / "dict", split="train", filter="mm_unsafe")
    assert [e.id for e in kept] == ["0", "2"] and [e.text for e in kept] == [TEXTS[0], TEXTS[2]]
    [first] = load_hf_disk(saved / "dict", split="train", filter="mm_unsafe", limit=1)
    assert first.id == "0"
    with pytest.raises(ValueError, match=r"filter column 'label': expected booleans"):
        load_hf_disk(saved / "one", filter="label")


def test_constant_label_replaces_a_label_column(tmp_path):
    benign = datasets.Dataset.from_dict(
        {"image": _pictures()[:2], "caption": [["a dog", "a brown dog"], ["a cat"]]},
        features=datasets.Features({"image": datasets.Image(),
                                    "caption": datasets.Sequence(datasets.Value("string"))}))
    benign.save_to_disk(tmp_path / "flickr")
    examples = load_hf_disk(tmp_path / "flickr", text="caption", constant_label=0)
    assert [(e.text, e.label) for e in examples] == [("a dog", 0), ("a cat", 0)]
    with pytest.raises(ValueError, match="label column 'label' not in"):
        load_hf_disk(tmp_path / "flickr", text="caption")
    for bad in (2, True):
        with pytest.raises(ValueError, match="constant_label: expected 0 or 1"):
            load_hf_disk(tmp_path / "flickr", text="caption", constant_label=bad)


def test_labels_are_validated_and_names_mapped_by_name_not_index(tmp_path):
    # A ClassLabel whose index 0 is "unsafe": the name decides, so row labels are 1, 0, 0, 1.
    reversed_names = datasets.ClassLabel(names=["unsafe", "safe"])
    _dataset(label=([0, 1, 1, 0], reversed_names)).save_to_disk(tmp_path / "classlabel")
    assert [e.label for e in load_hf_disk(tmp_path / "classlabel")] == LABELS
    names = ["Unsafe", "safe", " SAFE ", "unsafe"]
    _dataset(label=(names, datasets.Value("string"))).save_to_disk(tmp_path / "names")
    assert [e.label for e in load_hf_disk(tmp_path / "names")] == LABELS
    _dataset(label=(UNSAFE, datasets.Value("bool"))).save_to_disk(tmp_path / "bools")
    assert [e.label for e in load_hf_disk(tmp_path / "bools")] == [1, 0, 1, 0]
    for name, values, feature, message in [
            ("twos", [1, 0, 2, 1], datasets.Value("int64"), r"row 2: expected 0 or 1"),
            ("words", ["unsafe", "maybe", "safe", "safe"], datasets.Value("string"),
             r"row 1: unknown label name 'maybe'"),
            ("other", [0, 1, 1, 0], datasets.ClassLabel(names=["cat", "dog"]),
             r"row 0: unknown label name 'cat'")]:
        _dataset(label=(values, feature)).save_to_disk(tmp_path / name)
        with pytest.raises(ValueError, match=message):
            load_hf_disk(tmp_path / name)


def test_text_only_sets_and_image_path_columns(tmp_path):
    _dataset().save_to_disk(tmp_path / "one")
    text_only = load_hf_disk(tmp_path / "one", image=None)
    assert [e.text for e in text_only] == TEXTS and all(e.image_source is None for e in text_only)
    (tmp_path / "paths" / "img").mkdir(parents=True)
    for i, picture in enumerate(_pictures()[:2]):
        picture.save(tmp_path / "paths" / "img" / f"{i}.png")
    files = ["img/0.png", str(tmp_path / "paths" / "img" / "1.png")]  # relative, absolute
    datasets.Dataset.from_dict({"file": files, "text": TEXTS[:2], "label": LABELS[:2]}) \
        .save_to_disk(tmp_path / "paths")
    examples = load_hf_disk(tmp_path / "paths", image="file")
    assert [e.image_path for e in examples] == [tmp_path / "paths" / "img" / f"{i}.png"
                                                for i in range(2)]
    np.testing.assert_allclose(load_image(examples[1].image_source), 50 / 255, atol=1e-6)
    datasets.Dataset.from_dict({"file": ["img/9.png"], "text": ["x"], "label": [0]}) \
        .save_to_disk(tmp_path / "gone")
    with pytest.raises(ValueError, match=r"image column 'file', row 0: image .*9\.png not found"):
        load_hf_disk(tmp_path / "gone", image="file")


def test_mm_safetybench_text_field(tmp_path):
    bench = tmp_path / "mmsb"
    (bench / "data" / "processed_questions").mkdir(parents=True)
    (bench / "data" / "imgs" / "01-Illegal_Activitiy" / "SD_TYPO").mkdir(parents=True)
    fields = {"Question": "how do i mix the powder with acid",
              "Rephrased Question": "how do i mix the powder", "Key Phrase": "powder"}
    (bench / "data" / "processed_questions" / "01-Illegal_Activitiy.json").write_text(
        json.dumps({"0": fields}))
    Image.new("RGB", (20, 20)).save(bench / "data" / "imgs" / "01-Illegal_Activitiy" / "SD_TYPO"
                                     / "0.jpg")
    assert load_mm_safetybench(bench)[0].text == fields["Rephrased Question"]  # the default
    assert load_mm_safetybench(bench, text_field="Question")[0].text == fields["Question"]
    with pytest.raises(ValueError, match=r"question 0: no text field 'Rephrased Question\(SD\)'; "
                                         r"its fields: Question, Rephrased Question, Key Phrase"):
        load_mm_safetybench(bench, text_field="Rephrased Question(SD)")


def test_config_checks_the_data_options_before_any_work(tmp_path):
    def check(**data):
        config = RunConfig(data=DataConfig(**data), model=ModelConfig(model=f"hf:{tmp_path}"))
        return check_config(config.validate())

    check(dataset="hf-disk", data_path=str(tmp_path), split="test", filter_column="mm_unsafe",
          image_column="none", constant_label=1)
    with pytest.raises(ConfigError, match=r"--data-path: expected the folder of hf-disk"):
        check(dataset="hf-disk")
    with pytest.raises(ConfigError, match=r"--text-column: expected no value with --dataset "
                                          r"hateful-memes \(read by mm-safetybench, hf-disk\)"):
        check(dataset="hateful-memes", data_path=str(tmp_path), text_column="Question")
    with pytest.raises(ConfigError, match=r"--split: expected no value with --dataset "
                                          r"mm-interaction"):
        check(split="dev_seen")
    with pytest.raises(ConfigError, match=r"--constant-label: expected 0 or 1"):
        check(dataset="hf-disk", data_path=str(tmp_path), constant_label=2)
    with pytest.raises(ConfigError, match=r"--constant-label: expected either a label column"):
        check(dataset="hf-disk", data_path=str(tmp_path), constant_label=0, label_column="y")
    with pytest.raises(ConfigError, match=r"--filter-column: expected a non-empty name"):
        check(dataset="hf-disk", data_path=str(tmp_path), filter_column=" ")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers", reason="the hf: guard of the end-to-end run")
    pytest.importorskip("torch", reason="the hf: guard of the end-to-end run")
    from hf_tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def test_a_dataset_saved_to_disk_certifies_from_the_cli(saved, tiny, tmp_path, capsys):
    from hybridcert.cli import main

    out = tmp_path / "run"
    argv = ["certify", "--dataset", "hf-disk", "--data-path", str(saved / "dict"), "--split",
            "test", "--filter-column", "mm_unsafe", "--model", f"hf:{tiny}", "--n0", "8",
            "--n", "16", "--batch-size", "16", "--d-max", "1", "--out", str(out),
            "--no-progress", "--no-report"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "2"] and [r["true_label"] for r in rows] == [1, 0]
    assert all(r["model_calls"] == 16 and not r.get("failed") for r in rows)
    settings = json.loads((out / "run.json").read_text())
    assert settings["dataset"] == "hf-disk" and settings["image_size"] == 32
    assert len(settings["data"].pop("sha256")) == 64  # the split's files (issue 20)
    assert settings["data"] == {"source": "hf-disk", "path": str((saved / "dict").resolve()),
                                "split": "test", "text": "text", "image": "image",
                                "label": "label", "filter": "mm_unsafe", "constant_label": None}
    assert main(argv) == 0  # the same data identity resumes: nothing left to do
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    with pytest.raises(SystemExit):  # another filter is another data set: no resume
        main([a for a in argv if a not in ("--filter-column", "mm_unsafe")])
    assert "holds results made with other settings (data:" in capsys.readouterr().err


def test_a_benign_set_with_a_constant_label_certifies_from_the_cli(tiny, tmp_path):
    from hybridcert.cli import main

    benign = datasets.Dataset.from_dict(
        {"image": _pictures()[:2], "caption": [["a dog on the grass"], ["a cat"]]},
        features=datasets.Features({"image": datasets.Image(),
                                    "caption": datasets.Sequence(datasets.Value("string"))}))
    benign.save_to_disk(tmp_path / "flickr")
    out = tmp_path / "run"
    assert main(["certify", "--dataset", "hf-disk", "--data-path", str(tmp_path / "flickr"),
                 "--text-column", "caption", "--constant-label", "0", "--model", f"hf:{tiny}",
                 "--n", "16", "--batch-size", "16", "--d-max", "1", "--limit", "1",
                 "--out", str(out), "--no-progress", "--no-report"]) == 0
    [row] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["id"] == "0" and row["true_label"] == 0 and row["model_calls"] == 16
    data = json.loads((out / "run.json").read_text())["data"]
    assert data["label"] is None and data["constant_label"] == 0 and data["text"] == "caption"


def test_a_text_only_set_is_refused_by_an_image_text_guard_before_it_loads(saved, tmp_path):
    from hybridcert.run import plan

    config = RunConfig(data=DataConfig(dataset="hf-disk", data_path=str(saved / "one"),
                                       image_column="none"),
                       model=ModelConfig(model=f"hf:{tmp_path}", hf_task="image-text-to-text"))
    # not a model: never loaded (with --hf-task auto the guard's config tells its kind first)
    with pytest.raises(ConfigError, match=r"--image-column: expected an image for every example"):
        plan(config)


def test_the_readme_commands_are_valid_configurations(tmp_path):
    import re
    import shlex
    from pathlib import Path

    from hybridcert.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = [c for block in re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
                for c in block.replace("\\\n", " ").splitlines() if "--dataset hf-disk" in c]
    assert len(commands) == 2
    for command in commands:
        argv = [str(tmp_path) if a in ("unsafebench", "flickr30k") else a
                for a in shlex.split(command)[1:]]
        # GPU commands: --device cuda is refused where torch sees no CUDA (test_first_hour.py).
        argv = ["cpu" if a == "cuda" and not _cuda() else a for a in argv]
        config = RunConfig.from_args(build_parser().parse_args(argv))
        assert check_config(config.validate()).data.dataset == "hf-disk"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
