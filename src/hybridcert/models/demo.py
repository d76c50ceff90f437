"""Demo base models for the bundled data sets, trained under the smoothing noise.

Noise augmentation (Cohen et al. 2019): every training step sees freshly
noised inputs (token substitution or categorical substitution with ``beta``,
Gaussian noise with ``sigma``), so the base model is accurate on the noisy
inputs the smoothed classifier feeds it. Training is seeded
(``random_state``) and the result is cached on disk (``$HYBRIDCERT_CACHE``
or ``~/.cache/hybridcert``), keyed by everything that changes it. A second run
reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from ..datasets.base import Dataset
from ..noise import AbsorbingMask, CategoricalSubstitution, GaussianNoise, UniformSubstitution
from .adapters import SklearnClassifier, TorchClassifier

logger = logging.getLogger(__name__)

MODEL_VERSION = 1


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where demo models are cached: ``path``, ``$HYBRIDCERT_CACHE`` or ``~/.cache/hybridcert``."""
    root = path or os.environ.get("HYBRIDCERT_CACHE") or Path.home() / ".cache" / "hybridcert"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(data: Dataset, **settings) -> str:
    """Cache key: the code version, the settings, and a digest of the training data itself."""
    digest = hashlib.sha256()
    for array in (data.train.x_discrete, data.train.x_continuous, data.train.y):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(str(array.shape).encode())
    blob = json.dumps({"version": MODEL_VERSION, "data": data.name, "digest": digest.hexdigest(),
                       **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_cache(path: Path, read):
    """``read(path)`` of a cached model, or None when there is none or it cannot be read.

    A damaged file (a truncated write by another tool, a disk error, an edit) is
    trained again from the same seed and replaced, with a warning naming it: the
    cache only saves time, so it never decides what is certified.
    """
    if not path.exists():
        return None
    try:
        return read(path)
    except Exception as err:  # any failure to read it: the model is trained again
        logger.warning("the cached demo model %s cannot be read (%s: %s); training it again "
                       "(the file is replaced)", path, type(err).__name__,
                       str(err).splitlines()[0] if str(err) else "")
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # a crash never leaves a half-written model behind


# --------------------------------------------------------------------------- mm-interaction


def fusion_net(vocab_size: int, length: int, image_pixels: int):
    """Token embedding + image encoder, fused by an MLP: ``net(tokens, images) -> 2 logits``."""
    import torch
    from torch import nn

    class FusionNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, 16)
            self.text = nn.Sequential(nn.Flatten(), nn.Linear(length * 16, 64), nn.ReLU())
            self.image = nn.Sequential(nn.Flatten(), nn.Linear(image_pixels, 128), nn.ReLU(),
                                       nn.Linear(128, 64), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 2))

        def forward(self, tokens, images):
            return self.head(torch.cat([self.text(self.embed(tokens)), self.image(images)], 1))

    return FusionNet()


def mm_interaction_model(data: Dataset, *, sigma: float, beta: float, random_state: int = 0,
                         epochs: int = 150, cache: str | os.PathLike | None = None,
                         verbose: bool = False, kernel: str = "uniform") -> TorchClassifier:
    """The demo fusion network for ``mm-interaction``, trained under noise (cached).

    ``kernel="absorbing"`` trains it under mask noise, with one more embedding
    row for the mask id ``data.vocab_size`` (the id the CLI's absorbing kernel uses).
    """
    tag, vocab_size = _mm_interaction_tag(data, sigma, beta, kernel)
    noised = np.ones(data.train.x_discrete.shape[1], dtype=bool)
    if kernel == "absorbing":
        masker = AbsorbingMask(beta=beta, mask_id=data.vocab_size)

        def augment(tokens, images, rng):
            noisy = np.stack([masker.sample(t, noised, 1, rng)[0] for t in tokens])
            return noisy, images + sigma * rng.standard_normal(images.shape).astype(np.float32)

        return _fusion_model(data, augment, vocab_size, tag, random_state, epochs, cache, verbose)
    substitution = UniformSubstitution(beta=beta, vocab_size=data.vocab_size)

    def augment(tokens, images, rng):
        noisy = np.stack([substitution.sample(t, noised, 1, rng)[0] for t in tokens])
        return noisy, images + sigma * rng.standard_normal(images.shape).astype(np.float32)

    return _fusion_model(data, augment, vocab_size, tag, random_state, epochs, cache, verbose)


def mm_interaction_key(data: Dataset, *, sigma: float, beta: float, random_state: int = 0,
                       epochs: int = 150, kernel: str = "uniform") -> str:
    """The cache key of :func:`mm_interaction_model` for these arguments, without training or
    loading it: the model's identity (a run directory records it)."""
    tag, vocab_size = _mm_interaction_tag(data, sigma, beta, kernel)
    return _fusion_key(data, tag, vocab_size, random_state, epochs)


def _mm_interaction_tag(data: Dataset, sigma: float, beta: float, kernel: str):
    if kernel not in ("uniform", "absorbing"):
        raise ValueError(f"kernel must be 'uniform' or 'absorbing', got {kernel!r}")
    if kernel == "absorbing":  # one more embedding row: the mask id
        return f"s{sigma}-b{beta}-absorbing", data.vocab_size + 1
    return f"s{sigma}-b{beta}", data.vocab_size


def mm_interaction_ablation_model(data: Dataset, *, k_text: int, k_image: int,
                                  random_state: int = 0, epochs: int = 150,
                                  cache: str | os.PathLike | None = None) -> TorchClassifier:
    """The fusion network trained on MMCert-style ablated inputs (mask id = ``vocab_size``)."""
    from ..baselines import MMCertSmoother

    ablator = MMCertSmoother(lambda t, x: None, k_text=k_text, k_image=k_image,
                             mask_id=data.vocab_size)

    def augment(tokens, images, rng):
        pairs = [ablator.ablate(t, x, 1, rng) for t, x in zip(tokens, images)]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    return _fusion_model(data, augment, data.vocab_size + 1, f"ablate-t{k_text}-i{k_image}",
                         random_state, epochs, cache, False)


def _fusion_key(data, tag, vocab_size, random_state, epochs) -> str:
    import torch

    return _key(data, tag=tag, seed=random_state, epochs=epochs, vocab=vocab_size,
                torch=torch.__version__.split("+")[0])


def _fusion_model(data, augment, vocab_size, tag, random_state, epochs, cache, verbose):
    import torch

    length = data.train.x_discrete.shape[1]
    pixels = int(np.prod(data.train.x_continuous.shape[1:]))
    key = _fusion_key(data, tag, vocab_size, random_state, epochs)
    path = cache_dir(cache) / f"mm-interaction-{key}.pt"

    def read(path):
        net = fusion_net(vocab_size, length, pixels)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net

    net = _read_cache(path, read)
    if net is not None:
        return TorchClassifier(net)
    (logger.info if verbose else logger.debug)(
        "training the demo model (cached afterwards in %s) ...", path)
    with torch.random.fork_rng():  # seeded, without touching the caller's global torch RNG
        torch.manual_seed(random_state)
        net = fusion_net(vocab_size, length, pixels)
        _train_fusion(net, data, augment, epochs, np.random.default_rng(random_state))
    _atomic_write(path, _state_bytes(net))
    return TorchClassifier(net)


def _train_fusion(net, data: Dataset, augment, epochs, rng) -> None:
    """Adam on cross-entropy, every epoch on freshly augmented (noised) training inputs."""
    import torch

    tokens, images, labels = data.train.x_discrete, data.train.x_continuous, data.train.y
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        noisy_tokens, noisy_images = augment(tokens, images, rng)
        for batch in np.array_split(rng.permutation(len(labels)), max(1, len(labels) // 128)):
            optimiser.zero_grad()
            logits = net(torch.as_tensor(noisy_tokens[batch]), torch.as_tensor(noisy_images[batch]))
            loss_fn(logits, torch.as_tensor(labels[batch])).backward()
            optimiser.step()
    net.eval()


def _state_bytes(net) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- tabular

# Which scikit-learn estimator sits after the one-hot encoding of a table, and how many noisy
# copies of each training row it is fitted on. Adult follows the paper: an SVM, 5 copies.
TABULAR_ESTIMATORS = ("logreg", "linear-svm", "rbf-svm")
TABULAR_DEFAULTS = {"adult": {"estimator": "rbf-svm", "copies": 5}}
_DEFAULT = {"estimator": "logreg", "copies": 20}
# The RBF SVM is Nystroem's low-rank approximation of the kernel, then a linear SVM. An exact
# kernel SVM (libsvm) fits in time ~ rows^2 and predicts in time ~ support vectors; on Adult's
# 114k noisy rows that is about 10 minutes to fit on 2 cores and ~50k support vectors, ~20
# minutes to certify 30 examples at n = 10,000 (benchmarks/adult.py measures it on subsets).
NYSTROEM_COMPONENTS = 300
NYSTROEM_GAMMA = 0.05


def tabular_pipeline(arities, random_state: int = 0, estimator: str = "logreg"):
    """One-hot encoder for the categorical codes, scaler for the numbers, then ``estimator``.

    Parameters
    ----------
    arities : sequence of int
        Number of categories of each categorical field (the first ``len(arities)`` columns).
    estimator : {"logreg", "linear-svm", "rbf-svm"}
        Logistic regression, a linear SVM (``LinearSVC``), or an RBF-kernel SVM approximated
        by ``NYSTROEM_COMPONENTS`` Nystroem features and a linear SVM.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import LinearSVC

    if estimator not in TABULAR_ESTIMATORS:
        raise ValueError(f"estimator must be one of {TABULAR_ESTIMATORS}, got {estimator!r}")
    n_cat = len(arities)
    encode = ColumnTransformer([
        ("categorical", OneHotEncoder(categories=[list(range(a)) for a in arities],
                                      handle_unknown="ignore"), list(range(n_cat))),
        ("numeric", StandardScaler(), slice(n_cat, None)),
    ])
    if estimator == "logreg":
        return make_pipeline(encode, LogisticRegression(max_iter=2000, random_state=random_state))
    svm = LinearSVC(C=1.0, random_state=random_state)
    if estimator == "linear-svm":
        return make_pipeline(encode, svm)
    kernel = Nystroem(gamma=NYSTROEM_GAMMA, n_components=NYSTROEM_COMPONENTS,
                      random_state=random_state)
    return make_pipeline(encode, kernel, svm)


def noisy_copies(split, kernel: CategoricalSubstitution, sigma: float, copies: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` noisy versions of every row of ``split``, as ``(X, y)`` for the pipeline.

    Each row of ``X`` is what the smoothed classifier feeds the base model: the categorical
    codes after ``kernel`` and the numbers plus ``sigma`` Gaussian noise, side by side.
    """
    gauss = GaussianNoise(sigma)
    noised = np.ones(len(kernel.arities), dtype=bool)
    codes, values = split.x_discrete, split.x_continuous.astype(np.float64)
    X = np.vstack([np.hstack([kernel.sample(c, noised, copies, rng), gauss.sample(v, copies, rng)])
                   for c, v in zip(codes, values)])
    return X, np.repeat(split.y, copies)


def tabular_model(data: Dataset, *, sigma: float, beta: float, random_state: int = 0,
                  copies: int | None = None, estimator: str | None = None,
                  cache: str | os.PathLike | None = None) -> SklearnClassifier:
    """The demo scikit-learn pipeline for a table, fitted on noisy copies of its rows (cached).

    Parameters
    ----------
    copies, estimator : optional
        Noisy copies per training row and the estimator (see :func:`tabular_pipeline`).
        Defaults: Adult as in the paper, an SVM (``"rbf-svm"``) on 5 copies; other tables
        logistic regression on 20 copies.

    Returns
    -------
    SklearnClassifier
        Its ``training`` attribute records the estimator, the rows fitted and the seconds
        the fit took when it was trained (kept with the cached model).
    """
    key, copies, estimator = _tabular_key(data, sigma, beta, random_state, copies, estimator)
    path = cache_dir(cache) / f"{data.name}-{estimator}-{key}.pkl"

    def read(path):
        with path.open("rb") as fh:
            pipeline, training = pickle.load(fh)
        if not hasattr(pipeline, "predict") or not isinstance(training, dict):
            raise TypeError("not a fitted pipeline and its training record")
        return pipeline, training

    cached = _read_cache(path, read)
    if cached is not None:
        return _with_training(SklearnClassifier(cached[0]), cached[1])
    logger.info("training the %s demo model on %d x %d noisy rows (cached afterwards in %s)",
                estimator, copies, len(data.train), path)
    kernel = CategoricalSubstitution(beta=beta, arities=data.arities)
    X, y = noisy_copies(data.train, kernel, sigma, copies, np.random.default_rng(random_state))
    start = time.perf_counter()
    pipeline = tabular_pipeline(data.arities, random_state, estimator).fit(X, y)
    training = {"estimator": estimator, "copies": copies, "rows": len(y),
                "fit_seconds": time.perf_counter() - start}
    _atomic_write(path, pickle.dumps((pipeline, training)))
    return _with_training(SklearnClassifier(pipeline), training)


def tabular_key(data: Dataset, *, sigma: float, beta: float, random_state: int = 0,
                copies: int | None = None, estimator: str | None = None) -> str:
    """The cache key of :func:`tabular_model` for these arguments, without fitting or loading
    it: the model's identity (a run directory records it)."""
    return _tabular_key(data, sigma, beta, random_state, copies, estimator)[0]


def _tabular_key(data, sigma, beta, random_state, copies, estimator):
    """The key, the copies and the estimator (defaults resolved) of a demo table model."""
    defaults = TABULAR_DEFAULTS.get(data.name, _DEFAULT)
    estimator = defaults["estimator"] if estimator is None else estimator
    copies = defaults["copies"] if copies is None else copies
    if estimator not in TABULAR_ESTIMATORS:
        raise ValueError(f"estimator must be one of {TABULAR_ESTIMATORS}, got {estimator!r}")
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
    import sklearn

    key = _key(data, sigma=sigma, beta=beta, seed=random_state, copies=copies,
               arities=data.arities, estimator=estimator, sklearn=sklearn.__version__)
    return key, copies, estimator


def _with_training(model: SklearnClassifier, training: dict) -> SklearnClassifier:
    model.training = dict(training)
    return model
