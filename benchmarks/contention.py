"""The default run idle and beside CPU-bound processes, side by side (issue 12).

    python benchmarks/contention.py [--repeats 3] [--busy 4] [CONFIG ...]

Times ``hybridcert certify --limit 40`` (the demo model trained once beforehand
into a private cache) on the machine as it is, then beside ``--busy``
CPU-bound processes (bounded busy loops that stop by themselves after
``--busy-seconds``). Each CONFIG is one quoted string of extra certify
arguments, where ``ENV:K=V`` sets a variable (``"ENV:OMP_NUM_THREADS=1"``,
``"--threads 2"``); the configurations are interleaved in every repetition,
so that a machine whose background load drifts treats them alike. Prints
wall and CPU seconds of every run and the slowdown. With ``c`` cores
and ``k`` busy processes, the fair share of a run is ``c / (k + 1)`` cores
once it wants all of them, so a slowdown near ``(k + 1) / c`` (2.5 for 4
busy processes on 2 cores) is what contention alone explains.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def _certify(cache: Path, out: Path, config: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the run's process tree) of one default run."""
    env = {**os.environ, "HYBRIDCERT_CACHE": str(cache)}
    env.pop("OMP_NUM_THREADS", None)  # measure the default, unless the config sets it
    args = []
    for item in config.split():
        if item.startswith("ENV:"):
            key, value = item[4:].split("=", 1)
            env[key] = value
        else:
            args.append(item)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hybridcert.cli", "certify", "--limit", "40",
                    "--out", str(out), "--no-report", "--no-progress", *args],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=4)
    parser.add_argument("--busy-seconds", type=float, default=600)
    parser.add_argument("configs", nargs="*", default=[""],
                        help="quoted extra certify arguments per configuration")
    opts = parser.parse_args()
    configs = opts.configs or [""]
    times: dict = {(c, loaded): [] for c in configs for loaded in (False, True)}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for c_index, c in enumerate(configs):  # trains and caches the demo model once
            _certify(cache, Path(tmp) / f"warm{c_index}", c)
        for r in range(opts.repeats):
            for c_index, c in enumerate(configs):
                times[c, False].append(_certify(cache, Path(tmp) / f"i{r}-{c_index}", c))
            procs = [multiprocessing.Process(target=_busy, args=(opts.busy_seconds,))
                     for _ in range(opts.busy)]
            for p in procs:
                p.start()
            try:
                for c_index, c in enumerate(configs):
                    times[c, True].append(_certify(cache, Path(tmp) / f"l{r}-{c_index}", c))
            finally:
                for p in procs:
                    p.terminate()
                    p.join()
            print(f"repetition {r} done, load {os.getloadavg()[0]:.1f}", flush=True)
    cores = len(os.sched_getaffinity(0))
    print(f"certify --limit 40, {cores} cores, load now {os.getloadavg()[0]:.1f}")
    print(f"{'configuration':<44}{'run':>4}{'idle wall/cpu s':>18}"
          f"{f'beside {opts.busy} busy wall/cpu s':>28}{'slowdown':>10}")
    for c in configs:
        for r, ((a, a_cpu), (b, b_cpu)) in enumerate(zip(times[c, False], times[c, True])):
            print(f"{c or 'default':<44}{r:>4}{a:>10.1f} / {a_cpu:>5.1f}"
                  f"{b:>20.1f} / {b_cpu:>5.1f}{b / a:>10.2f}")
    print(f"fair-share slowdown if the run wants every core: {(opts.busy + 1) / cores:.2f}")


if __name__ == "__main__":
    main()
