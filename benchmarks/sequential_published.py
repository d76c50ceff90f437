"""Our look schedule against the published RS_conf_seq code (Voracek 2024), on Bernoulli populations.

    python benchmarks/sequential_published.py --rs-conf-seq PATH [--examples 400]
    RS_CONF_SEQ=PATH python benchmarks/sequential_published.py

``PATH`` is a clone of github.com/vvoracek/RS_conf_seq, or its bare git
directory (for instance what the ``fetch`` tool returns); its code is loaded
at run time, unmodified, and never copied into this repository. Without it
the published rows are skipped with a message. Its ``thresholds.py`` needs
``statsmodels``.

Question: single targets at d = 0, r in {0.25, 0.5, 1.0}, sigma = 0.5,
tau = 0.05 (the demo's certificate), alpha = 0.001, n_max = 100,000. The
populations are those of ``benchmarks/sequential.py`` (``uniform`` and
``probit``: Bernoulli(p) count processes, simulated exactly).

Arms:

- ``published``: ``thresholds.get_thresholds(p=p*, alpha, n=n_max)`` of
  RS_conf_seq (its betting confidence sequence, as its ``Certifier.certify``
  uses it), checked after every sample with the decision rule of
  ``core.Certifier.certify``: not certified when the success count equals
  ``lower[N]``, certified when it equals ``upper[N]``, undecided at ``n``.
  (``certify`` itself needs a torch model and its data sets; the rule is its
  ten lines, restated.)
- ``ours first=F``: :func:`hybridcert.sequential.run_targets` with
  ``look_schedule(n_max, first=F, block=min(F, 4))``: looks F, then a factor
  sqrt(2). F = 4 is the engine's schedule; F = 1 and 2 are the cheaper early
  looks of issue 22 (more looks, so each gets a smaller share of alpha).

Columns: median and mean samples, the ratio to the published arm, the
certified share.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hybridcert.noise import attack_atoms
from hybridcert.sequential import (
    CERTIFIED,
    UnionClopperPearson,
    certification_thresholds,
    look_schedule,
    run_targets,
)
from sequential import ALPHA, N_MAX, SIGMA, TAU, demo_spec, populations

RADII = (0.25, 0.5, 1.0)
FIRSTS = (4, 2, 1)


def load_published(path: str | None):
    """RS_conf_seq's ``thresholds`` module, loaded unmodified from a clone or bare git dir."""
    if not path:
        return None
    root = Path(path)
    source = root / "thresholds.py"
    if not source.exists():   # a bare git directory: read the file out of HEAD
        text = subprocess.run(["git", f"--git-dir={root}", "show", "HEAD:thresholds.py"],
                              check=True, capture_output=True, text=True).stdout
        source = Path(tempfile.mkdtemp()) / "thresholds.py"
        source.write_text(text)
    spec = importlib.util.spec_from_file_location("rs_conf_seq_thresholds", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def published_arm(p, p_star: float, thresholds, rng, chunk: int = 8192):
    """Certified flags and samples of RS_conf_seq's per-sample rule at one threshold."""
    lower, upper = (np.asarray(t) for t in thresholds.get_thresholds(p=p_star, alpha=ALPHA,
                                                                       n=N_MAX))
    n = len(lower)
    certified = np.zeros(p.size, dtype=bool)
    calls = np.full(p.size, n, dtype=np.int64)
    for i, pi in enumerate(p):
        a = done = 0
        while done < n - 1:
            m = min(chunk, n - 1 - done)
            ks = a + np.cumsum(rng.random(m) < pi)
            t = done + np.arange(1, m + 1)          # N after each sample (1-based)
            hit = (ks == lower[t]) | (ks == upper[t])
            if hit.any():
                j = int(hit.argmax())
                certified[i], calls[i] = bool(ks[j] == upper[t[j]]), int(t[j])
                break
            a, done = int(ks[-1]), done + m
    return certified, calls


def ours_arm(p, p_star: float, first: int, rng):
    cs = UnionClopperPearson(look_schedule(N_MAX, first=first, block=min(first, 4)), alpha=ALPHA)
    out = run_targets(lambda a, b: rng.binomial(b - a, p), cs, np.array([p_star]))
    return out.status[:, 0] == CERTIFIED, out.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rs-conf-seq", default=os.environ.get("RS_CONF_SEQ"),
                        help="clone or bare git directory of vvoracek/RS_conf_seq")
    parser.add_argument("--examples", type=int, default=400)
    args = parser.parse_args()
    published = load_published(args.rs_conf_seq)
    if published is None:
        print("RS_conf_seq not given (--rs-conf-seq or RS_CONF_SEQ): published rows skipped")
    rng = np.random.default_rng(0)
    spec = demo_spec()
    p_stars = certification_thresholds(RADII, d_max=0, sigma=SIGMA, tau=TAU,
                                       atoms=[attack_atoms(spec, 0)])[0]
    print(f"d = 0, sigma = {SIGMA}, tau = {TAU}, alpha = {ALPHA}, n_max = {N_MAX}")
    header = (f"{'population':<11}{'r':>5}{'p*':>8}{'arm':>14}{'median':>9}{'mean':>9}"
              f"{'med/pub':>9}{'mean/pub':>9}{'cert share':>11}")
    print(header)
    print("-" * len(header))
    for name, p in populations(args.examples, rng, demo=False).items():
        for r, p_star in zip(RADII, p_stars):
            rows = {}
            if published is not None:
                rows["published"] = published_arm(p, float(p_star), published, rng)
            for first in FIRSTS:
                rows[f"ours first={first}"] = ours_arm(p, float(p_star), first, rng)
            base = rows.get("published")
            for arm, (cert, calls) in rows.items():
                med, mean = float(np.median(calls)), float(calls.mean())
                ratio = (f"{med / np.median(base[1]):>9.2f}{mean / base[1].mean():>9.2f}"
                         if base is not None else f"{'':>18}")
                print(f"{name:<11}{r:>5}{p_star:>8.4f}{arm:>14}{med:>9.0f}{mean:>9.0f}{ratio}"
                      f"{cert.mean():>11.3f}", flush=True)


if __name__ == "__main__":
    main()
