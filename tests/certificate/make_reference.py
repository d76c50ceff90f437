"""Generate the 50-digit reference vectors of ``data/reference.jsonl`` (appends; resumable).

    python tests/certificate/make_reference.py 600

Each row draws a kernel, a budget, noise and thresholds over the ranges the
certificate must cover (tau down to 1e-15, p_lower up to 1 - 1e-15, beta = 1,
vocab_size up to 1e9, d up to 32) and stores the exact values computed by
``mp_oracle`` as decimal strings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mp_oracle as O
import mpmath as mp
import numpy as np

OUT = Path(__file__).with_name("data") / "reference.jsonl"


def draw(rng):
    kernel = rng.choice(["uniform", "uniform", "uniform", "absorbing", "categorical"])
    beta = float(rng.choice([0.05, 0.1, 0.25, 0.5, 0.9, 1.0, round(rng.uniform(0.01, 1), 6)]))
    tau = float(rng.choice([0.5, 4.6e-5, 1e-10, 1e-15, round(rng.uniform(0.01, 0.9), 6)]))
    p = float(rng.choice([1 - 10 ** rng.uniform(-15, -0.3), rng.uniform(tau, 1),
                          rng.uniform(0, 1)]))
    row = {"kernel": kernel, "beta": beta, "tau": tau, "p": p}
    if kernel == "uniform":
        row["d"] = int(rng.choice([0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32]))
        row["V"] = int(rng.choice([2, 3, 5, 50, 1000, 10**6, 10**9]))
        atoms = O.uniform_atoms(row["d"], beta, row["V"])
    elif kernel == "absorbing":
        row["d"] = int(rng.choice([0, 1, 2, 4, 8, 16, 32]))
        atoms = O.absorbing_atoms(row["d"], beta)
    else:
        row["arities"] = sorted(int(v) for v in rng.choice([2, 3, 4, 7, 16], size=rng.integers(1, 4)))
        atoms = O.experiment_atoms([(O.uniform_classes(beta, v), 1) for v in row["arities"]])
    row["radius"] = float(rng.choice([0.0, 10 ** rng.uniform(-4, 0.7)]))
    row["p_upper"] = float(rng.uniform(0, 1 - p)) if p < 1 else 0.0
    return row, atoms


def main(n: int, seed: int = 2026) -> None:
    done = sum(1 for _ in OUT.open()) if OUT.exists() else 0
    rng = np.random.default_rng(seed)
    with OUT.open("a") as fh:
        for i in range(n):
            row, atoms = draw(rng)  # draw every row so that a resumed run continues the stream
            if i < done:
                continue
            with mp.workdps(O.DPS):
                row["exact_radius"] = mp.nstr(O.certified_scaled_radius(row["p"], row["tau"], atoms), 40)
                row["exact_discrete"] = mp.nstr(O.discrete_bound(row["p"], atoms), 40)
                row["exact_v"] = mp.nstr(O.worst_case_probability(row["p"], row["radius"], atoms), 40)
                row["exact_upper"] = mp.nstr(
                    1 - O.worst_case_probability(1 - mp.mpf(row["p_upper"]), row["radius"], atoms), 40)
                row["exact_multiclass"] = mp.nstr(
                    O.multiclass_scaled_radius(row["p"], row["p_upper"], atoms), 40)
            fh.write(json.dumps(row) + "\n")
            fh.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 600)
