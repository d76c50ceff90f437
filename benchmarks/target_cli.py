"""One question on the command line: ``hybridcert certify`` with fixed n against ``--target 1:0.5``.

    python benchmarks/target_cli.py [--limit N] [--keep DIR]

Runs the two commands a user would compare, one after the other, on the
bundled demo (the demo model is trained first if it is not cached, outside
the timings), and prints one table:

- ``process s``: the command's wall time, start to exit (Python, torch and
  matplotlib imports, data, model, certification and report);
- ``certify s``: the certification alone, the sum of the rows' ``seconds``;
- ``calls``: model calls (noisy samples) of all examples;
- ``unsafe certified``: the share of unsafe test inputs flagged and certified
  at d = 1 changed token and L2 radius 0.5 (fixed n: ``radius_d1 >= 0.5``;
  target run: the question's status is ``certified``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = (1, 0.5)


def certify(out: Path, *extra: str, limit: int | None) -> float:
    command = [sys.executable, "-m", "hybridcert", "certify", "--out", str(out), "--no-progress",
               *(["--limit", str(limit)] if limit else []), *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def summary(out: Path, process: float) -> dict:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    unsafe = [r for r in rows if r["true_label"] == 1]

    def certified(row) -> bool:
        info = row["settings"].get("sequential") or {}
        if info.get("targets"):
            return info["status"][info["targets"].index(list(TARGET))] == "certified"
        return row["flagged"] and row["largest_budget"] >= TARGET[0] and \
            row["radius"][TARGET[0]] >= TARGET[1]

    return {"process": process, "certify": sum(r["seconds"] for r in rows),
            "calls": sum(r["model_calls"] for r in rows), "examples": len(rows),
            "share": sum(map(certified, unsafe)) / len(unsafe)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="certify the first N test examples only")
    parser.add_argument("--keep", type=Path, help="write the two run directories here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="target-cli-"))
    warm = root / "warm-up"   # trains and caches the demo model, so neither arm pays for it
    certify(warm, "--target", "1:0.5", limit=1)
    arms = {}
    for name, extra in (("fixed n = 10,000", ()), ("--target 1:0.5", ("--target", "1:0.5"))):
        out = root / name.split()[0].strip("-")
        arms[name] = summary(out, certify(out, *extra, limit=args.limit))
    base = arms["fixed n = 10,000"]
    header = (f"{'arm':<18}{'examples':>9}{'process s':>11}{'certify s':>11}{'calls':>12}"
              f"{'unsafe certified':>18}{'process x':>11}{'certify x':>11}{'calls x':>9}")
    print(f"hybridcert certify on the demo, question (d, r) = {TARGET}; runs in {root}")
    print(header)
    print("-" * len(header))
    for name, a in arms.items():
        print(f"{name:<18}{a['examples']:>9}{a['process']:>11.2f}{a['certify']:>11.2f}"
              f"{a['calls']:>12,}{a['share']:>18.3f}{base['process'] / a['process']:>11.1f}"
              f"{base['certify'] / a['certify']:>11.1f}{base['calls'] / a['calls']:>9.1f}")


if __name__ == "__main__":
    main()
