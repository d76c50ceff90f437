"""The Adult census data (the paper's tabular experiment): the UCI files carried by hybridcert.

No install step: the data is package data. The models here are small logistic regressions
trained in a module fixture; the demo SVM is trained and timed by benchmarks/adult.py, never in
a test.
"""

import csv
import dataclasses
import io
import json
import lzma
import pickle
from pathlib import Path

import numpy as np
import pytest

import hybridcert as hc
from hybridcert.cli import main
from hybridcert.datasets import load_adult, load_dataset, tabular
from hybridcert.datasets.base import Split
from hybridcert.models import SklearnClassifier, demo
from hybridcert.noise import CategoricalSubstitution

ARITIES = {"workclass": 9, "education": 16, "marital-status": 7, "occupation": 15,
           "relationship": 6, "race": 5, "sex": 2, "native-country": 42}
ALPHA = 0.01


@pytest.fixture(scope="module")
def adult():
    return load_adult()


DATA = Path(tabular.__file__).with_name("data")


def uci_text(name):
    """A bundled UCI file, decompressed here without the loader (and so without its checks)."""
    return lzma.decompress((DATA / f"{name}.xz").read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def raw_rows():
    """The bundled adult.data and adult.test read independently of the loader (csv module)."""
    def rows(name):
        lines = [line for line in uci_text(name).splitlines()
                 if line.strip() and not line.startswith("|")]
        reader = csv.DictReader(io.StringIO("\n".join(lines)), fieldnames=tabular.ADULT_COLUMNS,
                                skipinitialspace=True)
        return list(reader)

    return rows("adult.data"), rows("adult.test")


@pytest.fixture(scope="module")
def small_model(adult):
    """Logistic regression on 5 noisy copies of 4,000 training rows (about a second)."""
    train = adult.train
    keep = np.arange(4000)
    subset = dataclasses.replace(adult, train=Split(
        ids=[train.ids[i] for i in keep], x_discrete=train.x_discrete[keep],
        x_continuous=train.x_continuous[keep], y=train.y[keep]))
    return demo.tabular_model(subset, sigma=0.5, beta=0.25, estimator="logreg", copies=5)


def smoothed(model, data, **rule):
    return hc.SmoothedClassifier(model, discrete_noise=CategoricalSubstitution(0.25, data.arities),
                                 sigma=0.5, num_classes=2, batch_size=2000,
                                 **(rule or {"decision": "majority"}))


def label_count(model, data, label, codes, values, n, seed):
    """Monte Carlo: noisy samples (out of n) on which the base model returns ``label``."""
    counter = smoothed(model, data, decision="threshold", target_label=label, tau=0.5)
    return counter.certify(codes, values, n=n, alpha=ALPHA, d_max=0, random_state=seed).count[0]


def test_the_bundled_files_load_as_the_official_split_with_their_card(adult):
    # The UCI release's own split: adult.data trains, adult.test tests.
    assert (len(adult.train), len(adult.test)) == (32_561, 16_281)
    assert dict(zip(adult.feature_names, adult.arities)) == ARITIES
    assert adult.class_names == ["<=50K", ">50K"]
    assert np.bincount(adult.train.y).tolist() == [24_720, 7_841]
    assert np.bincount(adult.test.y).tolist() == [12_435, 3_846]  # labels '<=50K.' and '>50K.'
    assert adult.train.ids[0] == "adult-train-00000" and adult.test.ids[-1] == "adult-test-16280"
    # The split is fixed: no seed moves a row between the files.
    assert load_dataset("adult").test.ids == adult.test.ids
    assert load_adult(seed=1).test.ids == adult.test.ids
    card = adult.summary()
    for text in ("UCI", "Becker", "doi:10.24432/C5XW20", "CC BY 4.0", "48842 rows",
                 "adult.data for training (32561 rows)", "adult.test for testing (16281 rows)",
                 "native-country: 42", "'missing'", "37155 rows", "11687 rows",
                 "training rows only"):
        assert text in card, text


def test_the_bundled_files_are_checked_by_their_digest(monkeypatch):
    assert tabular.bundled_adult_text("adult.test").startswith("|1x3 Cross validator")
    digest, rows = tabular.ADULT_FILES["adult.test"]
    monkeypatch.setitem(tabular.ADULT_FILES, "adult.test", ("0" * 64, rows))
    monkeypatch.delenv("HYBRIDCERT_ADULT", raising=False)
    with pytest.raises(ValueError, match=r"bundled adult\.test is damaged or altered: SHA-256 "
                       + digest):
        load_adult()
    with pytest.raises(SystemExit) as exc:  # the command line says so in one line, exit 2
        main(["certify", "--dataset", "adult", "--n", "10", "--no-report"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="name must be one of"):
        tabular.bundled_adult_text("adult.names")


def test_numbers_are_standardised_with_training_rows_only(adult, raw_rows):
    columns = tabular.ADULT_NUMERIC
    train_rows, test_rows = raw_rows
    assert (len(train_rows), len(test_rows)) == (32_561, 16_281)
    train = np.array([[float(r[c]) for c in columns] for r in train_rows])
    test = np.array([[float(r[c]) for c in columns] for r in test_rows])
    assert np.allclose(adult.extras["mean"], train.mean(axis=0), rtol=1e-12)
    assert np.allclose(adult.extras["std"], train.std(axis=0), rtol=1e-12)
    # Including the test rows would give other statistics (so the check above can fail).
    assert not np.allclose(adult.extras["mean"], np.vstack([train, test]).mean(axis=0), rtol=1e-6)
    expected = (test - train.mean(axis=0)) / train.std(axis=0)
    assert np.allclose(adult.test.x_continuous, expected, atol=1e-5)
    assert np.allclose(adult.train.x_continuous.mean(axis=0), 0, atol=1e-5)
    assert adult.test.y.tolist() == [int(r["income"] == ">50K.") for r in test_rows]
    # Codes index the sorted categories; '?' is a category of its own.
    levels = adult.extras["levels"]
    row = train_rows[0]
    assert [levels[j][c] for j, c in enumerate(adult.train.x_discrete[0])] == \
        [row[f] for f in tabular.ADULT_CATEGORICAL]
    assert "?" in levels[tabular.ADULT_CATEGORICAL.index("native-country")]


def test_path_and_environment_come_before_the_bundled_copy(tmp_path, monkeypatch):
    fixture = Path(__file__).with_name("data") / "adult_small.data"
    monkeypatch.setenv("HYBRIDCERT_ADULT", str(fixture))
    assert len(load_adult().train) + len(load_adult().test) == 48
    monkeypatch.delenv("HYBRIDCERT_ADULT")
    assert len(load_adult(fixture).test) == 15  # one file: a seeded 70/30 split
    assert len(load_adult(fixture, test_fraction=0.5).test) == 24
    # A folder with the two UCI files: their own split, the test file's first line skipped.
    for name in tabular.ADULT_FILES:
        (tmp_path / name).write_text("\n".join(uci_text(name).splitlines()[:301]) + "\n")
    own = load_adult(tmp_path)
    assert (len(own.train), len(own.test)) == (301, 300)
    assert "adult.data and adult.test in" in own.card
    assert load_adult(limit=150).test.ids == load_adult(tmp_path, limit=150).test.ids
    with pytest.raises(ValueError, match="test_fraction applies to a single Adult file"):
        load_adult(tmp_path, test_fraction=0.3)
    with pytest.raises(ValueError, match=r"or a folder holding adult\.data and adult\.test"):
        load_adult(tmp_path / "absent")


def test_small_certification_on_real_rows(adult, small_model):
    assert np.mean(small_model(adult.test.x_discrete, adult.test.x_continuous)
                   == adult.test.y) > 0.8
    smooth = smoothed(small_model, adult)
    correct = 0
    for k in range(6):
        cert = smooth.certify(adult.test.x_discrete[k], adult.test.x_continuous[k], n0=50, n=1000,
                              alpha=ALPHA, d_max=3, random_state=k)
        assert len(cert.radii) == 4 and cert.model_calls == 1050
        correct += cert.label == adult.test.y[k]
        if cert.label == hc.sampling.ABSTAIN:
            continue
        # Budget 0 is Cohen's radius; every budget is the exact minimum over field choices.
        assert cert.radii[0] == pytest.approx(hc.gaussian_radius(cert.p_lower, sigma=0.5),
                                              rel=1e-6)
        front = hc.categorical_frontier(cert.p_lower, sigma=0.5, arities=adult.arities,
                                        beta=0.25, d_max=3)
        assert np.array_equal(cert.radii, front.radii)
        assert cert.largest_budget == front.largest_budget
    assert correct >= 4


def test_field_choices_equal_the_brute_force_over_subsets(adult):
    p = np.array([0.6, 0.9, 0.99, 0.996, 0.9995, 0.99995])
    exact = hc.categorical_frontier(p, sigma=0.5, arities=adult.arities, beta=0.25, d_max=3)
    from hybridcert.certificate.frontier import categorical_frontier_by_subsets

    brute = categorical_frontier_by_subsets(p, sigma=0.5, arities=adult.arities, beta=0.25,
                                            d_max=3)
    assert np.array_equal(exact.radii, brute.radii)
    assert np.array_equal(exact.largest_budget, brute.largest_budget)
    assert exact.largest_budget.tolist() == [0, 0, 0, 1, 1, 2]  # Adult's thresholds


def _attack(model, data, codes, values, d, radius):
    """Change the ``d`` fields whose best category lowers the logistic score most, and move the
    numbers by ``radius`` against the score's gradient (exact for a linear model)."""
    pipe = model.estimator
    encode, logreg = pipe[0], pipe[-1]
    sign = 1.0 if pipe.predict(np.hstack([codes, values])[None])[0] == 1 else -1.0

    def score(c, v):
        return sign * logreg.decision_function(encode.transform(np.hstack([c, v])[None]))[0]

    options = []
    for j, arity in enumerate(data.arities):
        trial = [score(np.r_[codes[:j], [c], codes[j + 1:]], values) for c in range(arity)]
        options.append((min(trial), j, int(np.argmin(trial))))
    attacked = codes.copy()
    for _, j, c in sorted(options)[:d]:
        attacked[j] = c
    scale = encode.named_transformers_["numeric"].scale_
    w = sign * logreg.coef_[0, -values.size:] / scale
    direction = -w / np.linalg.norm(w)
    flip_radius = score(attacked, values) / np.linalg.norm(w)  # where the base model flips
    return attacked, (values + radius * direction).astype(np.float32), flip_radius


def test_an_attack_within_the_certified_budget_does_not_flip_the_smoothed_label(
        adult, small_model):
    pipe = small_model.estimator
    X = np.hstack([adult.test.x_discrete[:300], adult.test.x_continuous[:300]])
    margin = np.abs(pipe.decision_function(X))
    k = int(np.argmax(np.where(pipe.predict(X) == adult.test.y[:300], margin, -np.inf)))
    codes, values = adult.test.x_discrete[k], adult.test.x_continuous[k]
    smooth = smoothed(small_model, adult)
    n = 4000
    cert = smooth.certify(codes, values, n0=100, n=n, alpha=ALPHA, d_max=3, random_state=0)
    assert cert.label == adult.test.y[k] and cert.largest_budget >= 1
    for d in range(cert.largest_budget + 1):
        attacked, moved, flip_radius = _attack(small_model, adult, codes, values, d,
                                               cert.radii[d])
        assert np.count_nonzero(attacked != codes) == d and flip_radius > 0
        assert np.linalg.norm(moved - values) <= cert.radii[d] * (1 + 1e-6)
        count = label_count(small_model, adult, cert.label, attacked, moved, n, seed=d)
        # Certified: the attacked probability is not provably below 1/2.
        assert hc.clopper_pearson_upper(count, n, ALPHA) >= 0.5
        # The attack is real: pushed well past the certified radius it flips the label.
        _, far, _ = _attack(small_model, adult, codes, values, d, 2.0 * flip_radius)
        far_count = label_count(small_model, adult, cert.label, attacked, far, n, seed=d)
        assert hc.clopper_pearson_upper(far_count, n, ALPHA) < 0.5
        assert cert.radii[d] < 2.0 * flip_radius


def test_certify_cli_on_adult_with_an_outside_model(tmp_path, adult, small_model):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(small_model.estimator))
    out = tmp_path / "run"
    assert main(["certify", "--dataset", "adult", "--model", f"sklearn:{path}", "--n", "500",
                 "--n0", "50", "--alpha", "0.01", "--d-max", "3", "--limit", "3", "--out",
                 str(out), "--no-progress", "--no-report"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("radius_d3" in r for r in rows)
    assert rows[0]["id"] == adult.test.ids[0]


@pytest.mark.slow
def test_experiment_adult_writes_tables_and_figure(tmp_path):
    from hybridcert.experiments.adult import adult_experiment

    out = tmp_path / "adult"
    # Logistic regression only: the demo SVM is trained in benchmarks/adult.py, not here.
    adult_experiment(out, n_examples=3, n=300, n0=30, models=("logreg",), progress=False)
    text = (out / "adult.md").read_text()
    for section in ("Clean and certified accuracy", "Certified accuracy against radius: logreg",
                    "Which budgets n samples can certify",
                    "Exact minimum over field choices versus brute force", "Certificates equal: yes",
                    "native-country: 42"):
        assert section in text, section
    results = json.loads((out / "adult.json").read_text())
    assert results["settings"]["beta"] == 0.25 and results["settings"]["alpha"] == 0.01
    assert set(results["models"]) == {"logreg"}
    assert results["field_choices"]["equal"]
    assert results["thresholds"]["fewest samples"]["d=2"] > 300
    assert (out / "adult_certified_accuracy.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "adult_results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["n"] for r in rows} == {300}
    with pytest.raises(ValueError, match="models must be among"):
        adult_experiment(out, models=("forest",))
    with pytest.raises(ValueError, match="alpha"):
        adult_experiment(out, alpha=1.5)


def test_a_model_trained_on_the_raw_file_certifies_through_the_cli(tmp_path, adult):
    """A pipeline fitted outside the project on pandas' reading of the file (category strings,
    raw numbers, string labels) is fed the same rows through `SklearnClassifier.for_table`."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    def read(name):  # a user's reading of the UCI file
        frame = pd.read_csv(io.StringIO(uci_text(name)), names=tabular.ADULT_COLUMNS,
                            skipinitialspace=True, comment="|")
        return frame.drop(columns="income"), frame["income"]

    X, y = read("adult.data")
    test_X, _ = read("adult.test")
    outside = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), tabular.ADULT_CATEGORICAL),
                                (StandardScaler(), tabular.ADULT_NUMERIC)),
        LogisticRegression(max_iter=1000)).fit(X.iloc[:5000], y.iloc[:5000])
    wrapped = SklearnClassifier.for_table(outside, adult)
    rows = [int(i.split("-")[2]) for i in adult.test.ids[:500]]
    expected = (outside.predict(test_X.iloc[rows]) == ">50K").astype(int)
    got = wrapped(adult.test.x_discrete[:500], adult.test.x_continuous[:500])
    assert np.mean(got == expected) > 0.99  # equal up to float32 rounding of the numbers
    path = tmp_path / "outside.pkl"
    path.write_bytes(pickle.dumps(outside))
    out = tmp_path / "run"
    assert main(["certify", "--dataset", "adult", "--model", f"sklearn:{path}", "--n", "300",
                 "--n0", "30", "--alpha", "0.01", "--d-max", "3", "--limit", "2", "--out",
                 str(out), "--no-progress", "--no-report"]) == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["predicted"] for r in results] == expected[:2].tolist()
    numbers_only = LogisticRegression().fit(X[["age", "hours-per-week"]], y)
    with pytest.raises(ValueError, match=r"lack \['capital-gain'"):
        SklearnClassifier.for_table(numbers_only, adult)


@pytest.mark.parametrize("kwargs,match", [
    ({"limit": 5}, "limit must be an integer >= 100"),
    ({"limit": True}, "limit must be an integer"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"test_fraction": 1e-9}, r"test_fraction must lie in \[0.01, 0.99\]"),
    ({"test_fraction": 0.99999}, r"test_fraction must lie in \[0.01, 0.99\]"),
    ({"test_fraction": 0.3}, "the official split .* is fixed"),
])
def test_loader_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_adult(**kwargs)


def test_label_encodings_are_checked(adult):
    from sklearn.linear_model import LogisticRegression

    X = np.hstack([adult.train.x_discrete[:300], adult.train.x_continuous[:300]])
    floats = LogisticRegression(max_iter=200).fit(X, adult.train.y[:300].astype(float))
    wrapped = SklearnClassifier.for_table(floats, adult)  # classes_ [0., 1.] are indices
    assert set(wrapped(adult.test.x_discrete[:50], adult.test.x_continuous[:50])) <= {0, 1}
    shifted = LogisticRegression(max_iter=200).fit(X, adult.train.y[:300] * 2 - 1)
    with pytest.raises(ValueError, match="label indices"):
        SklearnClassifier.for_table(shifted, adult)  # classes_ [-1, 1]: -1 would read as abstain
    with pytest.raises(ValueError, match="distinct"):
        SklearnClassifier(floats, classes=["a", "a "])
    with pytest.raises(ValueError, match="not one string"):
        SklearnClassifier(floats, classes="ab")
    with pytest.raises(ValueError, match="at least one field"):
        hc.certificate.frontier.categorical_frontier_by_subsets(0.99, sigma=0.5, arities=[],
                                                                beta=0.25)
