"""Load on ``hybridcert serve``: requests/s, latency and calls per request, batching on vs off.

    python benchmarks/serve_load.py [--requests 200] [--clients 32] [--n-max 2000]

Starts ``hybridcert serve`` on the demo model (``--target 1:0.25``, threshold
rule, alpha 0.001) in a subprocess, twice: with batching across requests (the
looks of concurrent requests share model batches through one
:class:`hybridcert.scheduler.LookScheduler`) and without (``--no-batching``:
one request's looks at a time). ``--clients`` threads send the test split's
inputs (``--requests`` in all, each with its own seed) over HTTP with httpx.
Columns: requests/s, p50 and p99 latency (ms, client side), model calls per
request, and whether both arms gave the same answers (they must: the seed fixes
the noise, batching only shares the model's batches).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str]):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hybridcert", "serve", *args, "--port",
                             str(port), "--queue-size", "512"],
                            env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def run_arm(name: str, args: list[str], bodies: list[dict], clients: int) -> dict:
    import httpx

    proc, url = _serve(args)
    try:
        with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients)) as client:
            client.post(url + "/v1/classify", json=bodies[0])   # warm-up

            def ask(body):
                t = time.perf_counter()
                answer = client.post(url + "/v1/classify", json=body)
                return time.perf_counter() - t, answer

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(ask, bodies))
            wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(30)
    bad = [a for _, a in results if a.status_code != 200]
    if bad:
        raise RuntimeError(f"{name}: {len(bad)} failed requests, first: {bad[0].text}")
    latency = np.array([t for t, _ in results]) * 1e3
    answers = [a.json() for _, a in results]
    return {"arm": name, "req/s": len(bodies) / wall, "p50 ms": np.percentile(latency, 50),
            "p99 ms": np.percentile(latency, 99),
            "calls/req": np.mean([a["model_calls"] for a in answers]),
            "answers": [(a["label"], a["p_lower"], a["model_calls"]) for a in answers]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--n-max", type=int, default=2000)
    opts = parser.parse_args(argv)
    sys.path.insert(0, str(SRC))
    from hybridcert.config import RunConfig
    from hybridcert.run import plan

    split = plan(RunConfig()).task.split
    bodies = []
    for k in range(opts.requests):
        i = k % len(split)
        bodies.append({"x_discrete": np.asarray(split.x_discrete[i]).tolist(),
                       "x_continuous": np.asarray(split.x_continuous[i], np.float64).tolist(),
                       "seed": k})
    args = ["--target", "1:0.25", "--n-max", str(opts.n_max), "--timeout", "600"]
    rows = [run_arm("batching on", args, bodies, opts.clients),
            run_arm("batching off", [*args, "--no-batching"], bodies, opts.clients)]
    same = rows[0].pop("answers") == rows[1].pop("answers")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"demo model, {opts.requests} requests, {opts.clients} clients, n_max {opts.n_max}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'arm':<14}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'calls/req':>11}")
    for r in rows:
        print(f"{r['arm']:<14}{r['req/s']:>9.1f}{r['p50 ms']:>10.1f}{r['p99 ms']:>10.1f}"
              f"{r['calls/req']:>11.1f}")
    print(f"same answers with and without batching: {same}")


if __name__ == "__main__":
    main()
