"""Throughput of the Ray executor with 1 and 2 workers on this machine, beside the local loop.

    python benchmarks/ray_scaling.py [--examples 60] [--n 10000]

Certifies the same mm-interaction examples (the demo model, cached) with the
local executor and with Ray at 1 and 2 workers. Prints examples per second,
the speed-up over one worker, and the driver's own time per example (the
wall time not spent inside workers, divided by the examples).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hybridcert.cli import build_parser
from hybridcert.config import RunConfig
from hybridcert.distributed import certify_split_ray
from hybridcert.run import plan
from hybridcert.rundir import read_results
from hybridcert.runner import certify_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--n", type=int, default=10_000)
    options = parser.parse_args()
    argv = ["certify", "--n", str(options.n), "--limit", str(options.examples), "--no-report",
            "--no-progress"]
    args = build_parser().parse_args(argv)
    run = plan(RunConfig.from_args(args))
    smoothed, split, settings = run.builder(), run.split, run.settings()
    print(f"{options.examples} examples, n = {options.n}, demo model, 2 cores\n")
    print(f"{'executor':<16}{'seconds':>9}{'examples/s':>12}{'speed-up':>10}{'driver ms/ex':>14}")
    print("-" * 61)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        spec = run.config.estimation
        certify_split(smoothed, split, Path(tmp) / "local", settings, spec,
                      limit=options.examples, progress=False)
        local = time.perf_counter() - start
        print(f"{'local':<16}{local:>9.2f}{options.examples / local:>12.2f}{'':>10}{'':>14}")
        for workers in (1, 2):
            import ray

            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR")
            out = Path(tmp) / f"ray{workers}"
            builder = run.builder
            start = time.perf_counter()
            certify_split_ray(builder, split, out, settings, spec, limit=options.examples,
                              progress=False, workers=workers)
            wall = time.perf_counter() - start
            ray.shutdown()
            inside = sum(r["seconds"] for r in read_results(out / "results.jsonl").values())
            driver = max(wall - inside / workers, 0.0) / options.examples * 1e3
            base = base or wall
            print(f"{f'ray, {workers} worker(s)':<16}{wall:>9.2f}{options.examples / wall:>12.2f}"
                  f"{base / wall:>9.2f}x{driver:>14.1f}")


if __name__ == "__main__":
    main()
