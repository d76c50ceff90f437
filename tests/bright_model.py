"""A base classifier that needs no training (flags bright images), its smoothed classifier and
examples: shared by the run-layer and run-identity tests."""

import numpy as np

import hybridcert as hc
from hybridcert.noise import UniformSubstitution


def bright(tokens, images):
    return (images.reshape(len(images), -1).mean(axis=1) > 0.5).astype(int)


def smoothed_for(model=bright):
    return hc.SmoothedClassifier(model, sigma=0.25,
                                 discrete_noise=UniformSubstitution(beta=0.5, vocab_size=50))


def examples(count=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((count, 4, 4)).round().astype(np.float32)
    return rng.integers(0, 50, (count, 6)), images, bright(None, images)
