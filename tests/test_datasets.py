"""The bundled data sets: determinism, cards, and the interaction-only property."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from hybridcert.datasets import load_adult, load_dataset, mm_interaction
from hybridcert.datasets.mm_interaction import RISKY_ADVERBS, RISKY_VERBS, VOCAB


def test_mm_interaction_is_deterministic_and_shaped():
    a, b = load_dataset("mm-interaction", seed=3), load_dataset("mm-interaction", seed=3)
    assert np.array_equal(a.test.x_discrete, b.test.x_discrete)
    assert np.array_equal(a.train.y, b.train.y) and a.test.ids == b.test.ids
    assert not np.array_equal(load_dataset("mm-interaction", seed=4).train.y, a.train.y)
    assert a.train.x_continuous.shape[1:] == (28, 28) and len(a.train) + len(a.test) == 1797
    assert a.train.x_continuous.min() >= 0 and a.train.x_continuous.max() <= 1
    assert a.vocab_size == len(VOCAB)
    assert "Label balance" in a.summary() and "XOR" in a.card


def test_digits_read_from_the_file_equal_load_digits(monkeypatch):
    """The file read without importing scikit-learn gives load_digits' numbers, as does the
    fallback through load_digits where the file is not found."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for _ in range(2):
        images, digit = mm_interaction.digits()
        assert images.dtype == bunch.images.dtype and digit.dtype == bunch.target.dtype
        np.testing.assert_array_equal(images, bunch.images)
        np.testing.assert_array_equal(digit, bunch.target)
        monkeypatch.setattr(mm_interaction.importlib.util, "find_spec", lambda name: None)


def test_mm_interaction_label_is_intent_xor_parity():
    data = load_dataset("mm-interaction")
    risky = {VOCAB.index(w) for w in RISKY_VERBS + RISKY_ADVERBS}
    for split in (data.train, data.test):
        intent = np.array([any(t in risky for t in row) for row in split.x_discrete])
        parity = np.array([data.extras["digit"][int(i.split("-")[1])] % 2 for i in split.ids])
        assert np.array_equal(split.y, intent ^ parity)


def test_unimodal_classifiers_are_at_chance_and_the_pair_is_not():
    data = load_dataset("mm-interaction")
    n = len(data.test)
    # A fair-coin classifier's accuracy has standard deviation 0.5/sqrt(n): allow 3 of them.
    tolerance = 3 * 0.5 / np.sqrt(n)
    images = [s.x_continuous.reshape(len(s), -1) for s in (data.train, data.test)]
    image_only = LogisticRegression(max_iter=2000).fit(images[0], data.train.y)
    assert abs(image_only.score(images[1], data.test.y) - 0.5) <= tolerance
    encoder = OneHotEncoder(handle_unknown="ignore").fit(data.train.x_discrete)
    text = [encoder.transform(s.x_discrete) for s in (data.train, data.test)]
    text_only = LogisticRegression(max_iter=2000).fit(text[0], data.train.y)
    assert abs(text_only.score(text[1], data.test.y) - 0.5) <= tolerance
    # Both modalities together determine the label: the bundled demo model learns it.
    from hybridcert.models.demo import mm_interaction_model

    model = mm_interaction_model(data, sigma=0.5, beta=0.25, epochs=40)
    assert np.mean(model(data.test.x_discrete, data.test.x_continuous) == data.test.y) > 0.9


def test_penguins_table():
    data = load_dataset("tabular")
    assert data.arities == (3, 2, 3) and data.num_classes == 3
    assert len(data.train) + len(data.test) == 333
    numeric = data.train.x_continuous
    assert np.allclose(numeric.mean(axis=0), 0, atol=1e-6)
    assert np.allclose(numeric.std(axis=0), 1, atol=1e-4)
    assert all((data.train.x_discrete[:, j] < a).all() for j, a in enumerate(data.arities))
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("cifar")


def test_adult_loader_reads_the_uci_format(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).with_name("data") / "adult_small.data"
    data = load_adult(fixture, seed=0)
    assert len(data.train) + len(data.test) == 48
    assert len(data.arities) == 8
    assert data.train.x_continuous.shape[1] == 6
    assert data.class_names == ["<=50K", ">50K"]
    assert "?" in data.extras["levels"][0]  # missing workclass is its own category
    # The OpenML export (header row, 'class' column) loads to the same table.
    lines = fixture.read_text().strip().splitlines()
    header = ("age,workclass,fnlwgt,education,education-num,marital-status,occupation,"
              "relationship,race,sex,capital-gain,capital-loss,hours-per-week,native-country,class")
    csv = tmp_path / "adult.csv"
    csv.write_text(header + "\n" + "\n".join(lines) + "\n")
    again = load_adult(csv, seed=0)
    assert np.array_equal(again.train.x_discrete, data.train.x_discrete)


def test_adult_loader_errors_list_what_was_expected(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDCERT_ADULT", str(tmp_path / "absent.data"))
    with pytest.raises(ValueError, match=r"absent\.data \(from HYBRIDCERT_ADULT\).*adult\.data file"):
        load_adult()
    with pytest.raises(ValueError, match=r"adult\.data file"):
        load_adult(tmp_path / "missing.data")
    bad = tmp_path / "bad.data"
    bad.write_text("39, State-gov, 77516\n")
    with pytest.raises(ValueError, match="expected 15 columns"):
        load_adult(bad)
