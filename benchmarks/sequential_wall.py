"""Wall time and model calls: fixed n vs sequential one at a time vs sequential batched (issue 22).

    python benchmarks/sequential_wall.py [--no-hf] [--quick] [--repeat 5]

One question, target (d = 1, r = 0.5), threshold rule, alpha = 0.001, in one
process with one thread, the arms side by side on the same inputs:

- ``fixed``: ``certify(n=10,000)``, certified where ``r*(1) >= 0.5``;
- ``seq 1-by-1``: ``certify(sampling="sequential", targets=[(1, 0.5)])``, one
  input after the other;
- ``seq batched``: the same certifications through
  :class:`hybridcert.scheduler.LookScheduler` (looks of many inputs share
  model batches of ``batch_size`` samples).

Models: ``demo`` (the demo model of ``hybridcert certify``, its unsafe test
inputs), ``llava`` (the tests' tiny LLaVA guard, built offline; one prompt, 6
random images),
``gpu-standin`` (a guard whose forward pass sleeps 5 ms + 0.05 ms a sample,
the latency floor of a GPU guard, labelling by image brightness; 16 inputs
from easy to hard, batch 1024).

Columns: wall seconds (fixed: one run of 10-20 s; a sequential arm lasts about
a second and varies by 10-20% from run to run on a shared machine, so it runs
``--repeat`` times, every run giving the same certificates, and the median is
reported with the range), noisy samples (model calls of the engine), forward
passes of the base classifier, certified share, fixed/arm ratios of wall
time and samples, and whether the batched certificates equal the
one-at-a-time ones (``Certificate.to_dict()``, every field).
Targets: demo wall time >= 20x below fixed with certified share at most 1
point below; stand-in wall ratio >= half the samples ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hybridcert.scheduler import LookScheduler
from hybridcert.smoothing import SmoothedClassifier

ALPHA, N_FIXED, N_MAX, TARGET = 0.001, 10_000, 100_000, (1, 0.5)
THREADS = 1


class Counted:
    """The base classifier, counting its forward passes (describe and prepare pass through)."""

    def __init__(self, model):
        self.model, self.passes = model, 0

    def __call__(self, tokens, cont):
        self.passes += 1
        return self.model(tokens, cont)

    def __getattr__(self, name):
        return getattr(self.model, name)


def standin_guard(tokens, images):
    """5 ms + 0.05 ms a sample (a GPU guard's latency floor), then a brightness rule."""
    time.sleep(0.005 + 0.00005 * len(images))
    return (np.asarray(images).mean(axis=(1, 2, 3)) > 0.5).astype(int)


def setups(quick: bool, hf: bool):
    from hybridcert.config import RunConfig
    from hybridcert.noise import UniformSubstitution
    from hybridcert.run import plan, set_threads

    set_threads(THREADS)
    run = plan(RunConfig())
    smoothed, split = run.builder(), run.split
    unsafe = [i for i in range(len(split)) if int(split.y[i]) == smoothed.target_label]
    yield "demo", smoothed, [(split.x_discrete[i], split.x_continuous[i], 10_000 + i)
                             for i in unsafe[:8 if quick else None]]
    if hf:
        yield "llava", *llava(quick)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 12)
    stand = SmoothedClassifier(standin_guard, sigma=0.5, clamp=(0.0, 1.0), decision="threshold",
                               tau=0.05, batch_size=1024,
                               discrete_noise=UniformSubstitution(0.25, vocab_size=50))
    levels = np.linspace(0.38, 0.9, 4 if quick else 16)
    yield "gpu-standin", stand, [(tokens, np.full((8, 8, 3), v, dtype=np.float32), i)
                                 for i, v in enumerate(levels)]


def llava(quick: bool):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_tiny import build_tiny_llava
    from hybridcert.models.hf import HFSafetyGuard
    from hybridcert.noise import UniformSubstitution

    path = build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava")
    guard = HFSafetyGuard.from_pretrained(path, policy="policy: flag violent or illegal content")
    smoothed = SmoothedClassifier(guard, sigma=0.5, clamp=(0.0, 1.0), decision="threshold",
                                  tau=0.01, batch_size=64,
                                  discrete_noise=UniformSubstitution(0.25, alphabet=guard.alphabet))
    rng = np.random.default_rng(1)
    tokens = guard.encode_text("how do i mix the powder with acid")   # one prompt, 6 images
    inputs = [(tokens, rng.random((*guard.native_size, 3), dtype=np.float32), i)
              for i in range(3 if quick else 6)]
    smoothed.certify(*inputs[0][:2], n=64, d_max=1)   # warm-up (first forward pass)
    return smoothed, inputs


def arm(name, smoothed, inputs, kind, repeat: int):
    """The arm's certificates and counts; ``wall`` is the median over ``repeat`` runs (the
    certificates of every run must be equal: each input's noise is its own stream)."""
    runs = [one_run(smoothed, inputs, kind) for _ in range(repeat)]
    first = runs[0]
    assert all([c.to_dict() for c in r["certs"]] == [c.to_dict() for c in first["certs"]]
               for r in runs[1:]), f"{name} {kind}: certificates differ between runs"
    return {**first, "wall": float(np.median([r["wall"] for r in runs])),
            "walls": [r["wall"] for r in runs]}


def one_run(smoothed, inputs, kind):
    counted = Counted(smoothed.base_classifier)
    smoothed.base_classifier = counted
    try:
        start = time.perf_counter()
        if kind == "fixed":
            certs = [smoothed.certify(x_d, x_c, n=N_FIXED, alpha=ALPHA, d_max=1, random_state=rs)
                     for x_d, x_c, rs in inputs]
            ok = [c.largest_budget >= 1 and c.radii[1] >= TARGET[1] for c in certs]
        elif kind == "seq 1-by-1":
            certs = [smoothed.certify(x_d, x_c, alpha=ALPHA, d_max=1, sampling="sequential",
                                      n_max=N_MAX, targets=[TARGET], random_state=rs)
                     for x_d, x_c, rs in inputs]
        else:
            certs = list(LookScheduler(smoothed, alpha=ALPHA, d_max=1, n_max=N_MAX,
                                       targets=[TARGET]).certify_many(inputs))
        wall = time.perf_counter() - start
    finally:
        smoothed.base_classifier = counted.model
    if kind != "fixed":
        ok = [c.decisions[TARGET] == "certified" for c in certs]
    return {"wall": wall, "samples": sum(c.model_calls for c in certs), "passes": counted.passes,
            "share": float(np.mean(ok)), "certs": certs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-hf", action="store_true", help="skip the tiny LLaVA guard")
    parser.add_argument("--quick", action="store_true", help="fewer inputs")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of each sequential arm, the median reported (5)")
    args = parser.parse_args()
    header = (f"{'model':<12}{'inputs':>7}{'arm':>13}{'wall s':>9}{'samples':>10}"
              f"{'passes':>8}{'cert share':>11}{'wall x':>8}{'samples x':>10}{'same certs':>11}")
    print(f"target (d, r) = {TARGET}, alpha = {ALPHA}, fixed n = {N_FIXED}, n_max = {N_MAX}; "
          f"wall s: fixed one run, sequential the median of {args.repeat} (min-max in brackets)")
    print(header)
    print("-" * len(header))
    for name, smoothed, inputs in setups(args.quick, not args.no_hf):
        rows = {kind: arm(name, smoothed, inputs, kind, 1 if kind == "fixed" else args.repeat)
                for kind in ("fixed", "seq 1-by-1", "seq batched")}
        same = [a.to_dict() == b.to_dict() for a, b in zip(rows["seq 1-by-1"]["certs"],
                                                            rows["seq batched"]["certs"])]
        for kind, r in rows.items():
            print(f"{name:<12}{len(inputs):>7}{kind:>13}{r['wall']:>9.2f}{r['samples']:>10}"
                  f"{r['passes']:>8}{r['share']:>11.3f}"
                  f"{rows['fixed']['wall'] / r['wall']:>8.1f}"
                  f"{rows['fixed']['samples'] / r['samples']:>10.1f}"
                  f"{(str(all(same)) if kind == 'seq batched' else ''):>11}"
                  f"{spread(r['walls'])}", flush=True)


def spread(walls: list[float]) -> str:
    return "" if len(walls) == 1 else f"  [{min(walls):.2f}-{max(walls):.2f}]"


if __name__ == "__main__":
    main()
