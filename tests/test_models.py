"""Adapters and the demo models: protocol, reproducibility, caching."""

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

from hybridcert.datasets import load_dataset
from hybridcert.models import SklearnClassifier, TorchClassifier, demo
from hybridcert.noise import CategoricalSubstitution
from hybridcert.smoothing import SmoothedClassifier


def test_demo_fusion_model_is_reproducible_and_cached(tmp_path):
    torch = pytest.importorskip("torch")
    data = load_dataset("mm-interaction")
    first = demo.mm_interaction_model(data, sigma=0.5, beta=0.25, epochs=3, cache=tmp_path / "a")
    second = demo.mm_interaction_model(data, sigma=0.5, beta=0.25, epochs=3, cache=tmp_path / "b")
    for p, q in zip(first.module.state_dict().values(), second.module.state_dict().values()):
        assert torch.equal(p, q)
    cached = list((tmp_path / "a").glob("mm-interaction-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = demo.mm_interaction_model(data, sigma=0.5, beta=0.25, epochs=3, cache=tmp_path / "a")
    assert cached[0].stat().st_mtime_ns == stamp  # loaded, not retrained
    x_d, x_c = data.test.x_discrete[:50], data.test.x_continuous[:50]
    assert np.array_equal(again(x_d, x_c), first(x_d, x_c))
    other = demo.mm_interaction_model(data, sigma=0.25, beta=0.25, epochs=3, cache=tmp_path / "a")
    assert other is not None and len(list((tmp_path / "a").glob("*.pt"))) == 2


def test_tabular_pipeline_trained_under_noise(tmp_path):
    data = load_dataset("tabular")
    model = demo.tabular_model(data, sigma=0.5, beta=0.25, cache=tmp_path)
    assert np.mean(model(data.test.x_discrete, data.test.x_continuous) == data.test.y) > 0.9
    smooth = SmoothedClassifier(model, sigma=0.5, num_classes=3,
                                discrete_noise=CategoricalSubstitution(0.25, data.arities))
    cert = smooth.certify(data.test.x_discrete[0], data.test.x_continuous[0], n0=50, n=500,
                          alpha=0.01, random_state=0)
    assert cert.label == data.test.y[0] and len(cert.radii) == 4  # d = 0..3 fields


def test_any_fitted_sklearn_classifier_fits_the_protocol():
    data = load_dataset("tabular")
    X = np.hstack([data.train.x_discrete, data.train.x_continuous])
    tree = DecisionTreeClassifier(random_state=0).fit(X, data.train.y)
    labels = SklearnClassifier(tree)(data.test.x_discrete, data.test.x_continuous)
    assert labels.shape == (len(data.test),) and labels.dtype == np.int64
    custom = SklearnClassifier(tree, features=lambda t, c: np.hstack([t, c]))
    assert np.array_equal(custom(data.test.x_discrete, data.test.x_continuous), labels)
    with pytest.raises(ValueError, match="fitted scikit-learn classifier"):
        SklearnClassifier(object())


def test_torch_adapter_accepts_numpy_and_tensors():
    torch = pytest.importorskip("torch")

    class Sum(torch.nn.Module):
        def forward(self, tokens, images):
            score = images.flatten(1).mean(1) + 0.0 * tokens.float().sum(1)
            return torch.stack([-score, score], dim=1)

    model = TorchClassifier(Sum())
    images = np.array([[[-1.0]], [[1.0]]], dtype=np.float32)
    tokens = np.zeros((2, 3), dtype=np.int64)
    assert list(model(tokens, images)) == [0, 1]
    assert list(model(torch.as_tensor(tokens), torch.as_tensor(images))) == [0, 1]
