"""Time of the default `hybridcert certify` on a fresh install, training and report included.

    python benchmarks/main_job.py

Runs the README's first command in a fresh output directory with an empty
model cache (so the demo model is trained), then prints the wall time, the
per-example cost, and the engine's share of it next to the base model's.
Target (issue 5): at most 5 minutes on 2 CPU cores with n >= 10,000 per
example; engine and I/O overhead at most 10% of base-model time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HYBRIDCERT_CACHE": str(Path(tmp) / "cache")}
        out = Path(tmp) / "run"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hybridcert.cli", "certify", "--out", str(out),
                        "--no-progress"], env=env, check=True, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        seconds = np.array([r["seconds"] for r in rows])
        calls = np.array([r["model_calls"] for r in rows])
        model = _model_seconds(int(calls[0]), Path(tmp) / "cache")
        noise = _noise_seconds(int(calls[0]))
    print(f"{'quantity':<46}{'value':>12}")
    print("-" * 58)
    print(f"{'default run, wall time (train+certify+report)':<46}{total:>11.1f}s")
    print(f"{'examples certified':<46}{len(rows):>12}")
    print(f"{'model calls per example':<46}{calls.mean():>12.0f}")
    print(f"{'seconds per example (certify)':<46}{seconds.mean():>12.4f}")
    print(f"{'base-model seconds per example':<46}{model:>12.4f}")
    print(f"{'Gaussian noise draw per example':<46}{noise:>12.4f}")
    print(f"{'engine + I/O overhead beyond model and noise':<46}"
          f"{(seconds.mean() - model - noise) / model:>12.1%}")
    print(f"{'  ... including the noise draw':<46}{(seconds.mean() - model) / model:>12.1%}")
    print(f"\ntarget <= 300 s: {'PASS' if total <= 300 else 'FAIL'}")


def _noise_seconds(calls: int) -> float:
    """The Gaussian draws of one example alone (torch, as the CLI draws them for this model)."""
    import torch

    from hybridcert.noise import GaussianNoise

    image = torch.rand(28, 28)
    noise = GaussianNoise(0.5)
    rng = np.random.default_rng(0)
    noise.sample(image, 1000, rng)
    start = time.perf_counter()
    for _ in range(int(np.ceil(calls / 1000))):
        noise.sample(image, 1000, rng)
    return time.perf_counter() - start


def _model_seconds(calls: int, cache: Path) -> float:
    """Time the demo model alone on the same number of noisy inputs, in the same batches."""
    from hybridcert.datasets import load_dataset
    from hybridcert.models.demo import mm_interaction_model

    data = load_dataset("mm-interaction")
    model = mm_interaction_model(data, sigma=0.5, beta=0.25, cache=cache)
    rng = np.random.default_rng(0)
    tokens = np.repeat(data.test.x_discrete[:1], 1000, axis=0)
    images = rng.random((1000, 28, 28), dtype=np.float32)
    model(tokens, images)
    start = time.perf_counter()
    for _ in range(int(np.ceil(calls / 1000))):
        model(tokens, images)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
