"""``mm-interaction``: a text + image safety task whose label depends only on the interaction.

Card
----
What it is. Each example pairs a real handwritten digit (scikit-learn's
``load_digits``: 1,797 8x8 images, pixels scaled to [0, 1] and upsampled
bilinearly to 28x28, MNIST's size, so that Gaussian noise of sigma = 0.5 per
pixel leaves the digit legible) with a templated request of 10 tokens over a
fixed 51-word vocabulary, such as "please i mix the powder secretly with acid
for fumes".

How the label is made. The request carries an *intent bit* in four words (its
verb, adverb, tool and goal all come from the benign or from the risky group,
so that a few noisy substitutions do not erase it); the image carries a
*parity bit* (odd digit). The example is "unsafe" (label 1) iff intent XOR parity:
the same request is harmless next to one kind of image and harmful next to
the other, as in the multimodal safety filtering of the paper. The intent bit
is drawn independently of the image and both bits are balanced, so the label
is independent of the text alone and of the image alone: a text-only or
image-only classifier is at chance (checked in ``tests/test_datasets.py``).

Determinism. Texts, pairing and the train/test split are drawn from
``numpy.random.default_rng(seed)``; the same seed gives the same data.
Split: 80% train, 20% test (1,437 / 360 examples), stratified on the label.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .base import Dataset, Split

OPENERS = ["how", "please", "can"]
BENIGN_VERBS = ["store", "label", "clean", "sort", "weigh", "pack"]
RISKY_VERBS = ["mix", "heat", "dissolve", "grind", "boil", "ignite"]
OBJECTS = ["powder", "bottle", "sample", "jar", "crystals", "liquid"]
BENIGN_ADVERBS = ["carefully", "neatly", "slowly", "gently"]
RISKY_ADVERBS = ["secretly", "strongly", "together", "directly"]
BENIGN_TOOLS = ["gloves", "labels", "shelves", "boxes"]
RISKY_TOOLS = ["fuel", "acid", "bleach", "matches"]
BENIGN_GOALS = ["safety", "storage", "school", "cleanup"]
RISKY_GOALS = ["fumes", "smoke", "pressure", "sparks"]
LINKS = ["the", "with", "for", "?", "do", "i"]
VOCAB = sorted(set(OPENERS + BENIGN_VERBS + RISKY_VERBS + OBJECTS + BENIGN_ADVERBS
                   + RISKY_ADVERBS + BENIGN_TOOLS + RISKY_TOOLS + BENIGN_GOALS + RISKY_GOALS
                   + LINKS))
LENGTH = 10
IMAGE_SIZE = 28


def _request(intent: int, rng: np.random.Generator) -> list[str]:
    """A 10-token request whose verb, adverb, tool and goal all come from the intent's group."""
    group = 1 if intent else 0
    verb = rng.choice((BENIGN_VERBS, RISKY_VERBS)[group])
    adverb = rng.choice((BENIGN_ADVERBS, RISKY_ADVERBS)[group])
    tool = rng.choice((BENIGN_TOOLS, RISKY_TOOLS)[group])
    goal = rng.choice((BENIGN_GOALS, RISKY_GOALS)[group])
    return [rng.choice(OPENERS), "i", verb, "the", rng.choice(OBJECTS), adverb, "with", tool,
            "for", goal]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images ``(1797, 8, 8)`` with values 0..16, and their digits.

    Read from scikit-learn's data file as ``sklearn.datasets.load_digits`` reads
    it (the same numbers; ``tests/test_datasets.py`` compares them), without
    importing scikit-learn, which takes longer than building the whole data
    set; through ``load_digits`` where the file is not where it is expected.
    """
    spec = importlib.util.find_spec("sklearn")   # finds the package, does not import it
    where = spec.submodule_search_locations if spec is not None else None
    path = Path(where[0], "datasets", "data", "digits.csv.gz") if where else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def load(seed: int = 0) -> Dataset:
    """The ``mm-interaction`` data set (see the module docstring for its card)."""
    from scipy.ndimage import zoom

    pixels, digit = digits()
    scale = IMAGE_SIZE / 8
    images = np.clip(zoom(pixels / 16.0, (1, scale, scale), order=1), 0, 1)
    images = images.astype(np.float32)
    parity = (digit % 2).astype(np.int64)
    rng = np.random.default_rng(seed)
    intent = rng.integers(0, 2, size=len(images))
    index = {w: i for i, w in enumerate(VOCAB)}
    tokens = np.array([[index[w] for w in _request(int(t), rng)] for t in intent], dtype=np.int64)
    labels = intent ^ parity
    order = rng.permutation(len(images))
    test = np.concatenate([order[labels[order] == c][: round(0.2 * np.sum(labels == c))]
                           for c in (0, 1)])
    test = np.sort(test)
    train = np.setdiff1d(np.arange(len(images)), test)

    def split(idx):
        return Split(ids=[f"mm-{i:04d}" for i in idx], x_discrete=tokens[idx],
                     x_continuous=images[idx], y=labels[idx])

    return Dataset(
        name="mm-interaction", train=split(train), test=split(test), num_classes=2,
        vocab=list(VOCAB), card=__doc__.split("Card\n----\n", 1)[1].strip(),
        class_names=["safe", "unsafe"],
        extras={"intent": intent, "parity": parity, "digit": digit},
    )
