"""Model calls per certified frontier (shared-D vs loop-over-d) and engine overhead.

    python benchmarks/engine.py

For a small torch model on 28x28 images plus 16 tokens, certifies a frontier
with d_max = 8 under both protocols at the same joint alpha, and times the
base model and the noise draws separately from everything else the engine
does (batching, label checks, counting, confidence bounds, the certificate).
Targets (issue 4): at least 8x fewer model calls with shared-D, engine
overhead at most 10% of base-model time. The Gaussian draw itself is reported
in its own column: any smoothing pays it, and for a model as cheap as the MLP
below (3 us a sample) it costs more than the model.
"""

from __future__ import annotations

import time

import torch

from hybridcert.noise import UniformSubstitution
from hybridcert.smoothing import SmoothedClassifier

torch.set_num_threads(2)


def timed(fn, clock: dict, key: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        clock[key] = clock.get(key, 0.0) + time.perf_counter() - start
        return out

    return wrapper


class TimedModel:
    """A small fused network: token embedding bag + image MLP/CNN, timed on every call."""

    def __init__(self, kind: str, vocab: int = 1000, seed: int = 0):
        torch.manual_seed(seed)
        self.embed = torch.nn.EmbeddingBag(vocab, 32)
        if kind == "mlp":
            self.image = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 256),
                                             torch.nn.ReLU(), torch.nn.Linear(256, 64))
        else:
            self.image = torch.nn.Sequential(
                torch.nn.Unflatten(1, (1, 28)), torch.nn.Conv2d(1, 16, 3, padding=1),
                torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, padding=1),
                torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                torch.nn.Linear(32 * 7 * 7, 64))
        self.head = torch.nn.Linear(96, 2)
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, tokens, images):
        start = time.perf_counter()
        feats = torch.cat([self.embed(tokens), self.image(images)], dim=1)
        labels = self.head(feats).argmax(dim=1)
        self.seconds += time.perf_counter() - start
        return labels


def main() -> None:
    tokens = torch.randint(0, 1000, (16,))
    image = torch.rand(28, 28)
    n0, n, alpha, d_max = 100, 10_000, 0.001, 8
    header = (f"{'model':<6}{'protocol':<12}{'calls':>8}{'total s':>9}{'model s':>9}"
              f"{'noise s':>9}{'noise/model':>12}{'overhead':>10}")
    print(f"n0={n0}, n={n}, alpha={alpha} (joint), d_max={d_max}, batch 1000, 2 threads")
    print("overhead = (total - model - noise) / model\n")
    print(header)
    print("-" * len(header))
    calls = {}
    for kind in ("mlp", "cnn"):
        for protocol in ("shared", "per_budget"):
            model = TimedModel(kind)
            kernel = UniformSubstitution(beta=0.25, vocab_size=1000)
            smooth = SmoothedClassifier(model, discrete_noise=kernel, sigma=0.25, clamp=(0.0, 1.0),
                                        decision="majority", batch_size=1000, random_state=0)
            smooth.certify(tokens, image, n0=10, n=1000, alpha=alpha, d_max=d_max)  # warm-up
            clock: dict = {}
            object.__setattr__(kernel, "sample", timed(kernel.sample, clock, "noise"))
            object.__setattr__(smooth.gaussian, "sample",
                               timed(smooth.gaussian.sample, clock, "noise"))
            model.seconds = 0.0
            start = time.perf_counter()
            cert = smooth.certify(tokens, image, n0=n0, n=n, alpha=alpha, d_max=d_max,
                                  protocol=protocol)
            total = time.perf_counter() - start
            noise = clock["noise"]
            overhead = (total - model.seconds - noise) / model.seconds
            calls[kind, protocol] = cert.model_calls
            print(f"{kind:<6}{protocol:<12}{cert.model_calls:>8}{total:>9.3f}{model.seconds:>9.3f}"
                  f"{noise:>9.3f}{noise / model.seconds:>12.1%}{overhead:>10.1%}")
    ratio = calls["mlp", "per_budget"] / calls["mlp", "shared"]
    print(f"\nmodel calls, loop-over-d / shared-D: {ratio:.2f}x (target >= 8x) "
          f"{'PASS' if ratio >= 8 else 'FAIL'}")


if __name__ == "__main__":
    main()
