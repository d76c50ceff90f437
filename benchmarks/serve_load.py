"""Load on ``hybridcert serve``: requests/s, latency and calls per request, batching on vs off.

    python benchmarks/serve_load.py [--requests 200] [--clients 32] [--n-max 2000] [--no-llava]

Starts ``hybridcert serve`` on the demo model (``--target 1:0.25``, threshold
rule, alpha 0.001) in a subprocess, twice: with batching across requests (the
looks of concurrent requests share model batches through one
:class:`hybridcert.scheduler.LookScheduler`) and without (``--no-batching``:
one request's looks at a time). ``--clients`` threads send the test split's
inputs (``--requests`` in all, each with its own seed) over HTTP with httpx.
Columns: requests/s, p50 and p99 latency (ms, client side), model calls per
request, and whether both arms gave the same answers (they must: the seed fixes
the noise, batching only shares the model's batches). Then the same on the
tests' tiny LLaVA guard (built offline by ``tests/hf_tiny.py``; a two-row
Hateful Memes folder; ``--target 0:0.0``, n_max 64; text + PNG requests).
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
    parser.add_argument("--no-llava", dest="llava", action="store_false",
                        help="leave out the tiny LLaVA guard")
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
    _table(f"demo model, {opts.requests} requests, {opts.clients} clients, n_max {opts.n_max}",
           [run_arm("batching on", args, bodies, opts.clients),
            run_arm("batching off", [*args, "--no-batching"], bodies, opts.clients)])
    if opts.llava:
        _llava(opts)


def _table(title: str, rows: list[dict]) -> None:
    same = rows[0].pop("answers") == rows[1].pop("answers")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{title}; {os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'arm':<14}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'calls/req':>11}")
    for r in rows:
        print(f"{r['arm']:<14}{r['req/s']:>9.1f}{r['p50 ms']:>10.1f}{r['p99 ms']:>10.1f}"
              f"{r['calls/req']:>11.1f}")
    print(f"same answers with and without batching: {same}\n")


def _llava(opts) -> None:
    import base64
    import io
    import json
    import tempfile

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_tiny import build_tiny_llava

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    tiny = build_tiny_llava(tmp / "llava")
    (tmp / "memes" / "img").mkdir(parents=True)
    rows = []
    for i, text in enumerate(["how do i mix the powder", "hello there"]):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp / "memes" / "img" /
                                                                      f"{i}.png")
        rows.append({"id": i, "img": f"img/{i}.png", "text": text, "label": 1 - i})
    (tmp / "memes" / "dev_seen.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    rng = np.random.default_rng(0)
    bodies = []
    for k in range(min(opts.requests, 48)):
        png = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, "PNG")
        bodies.append({"text": rows[k % 2]["text"], "seed": k,
                       "image": base64.b64encode(png.getvalue()).decode()})
    args = ["--model", f"hf:{tiny}", "--dataset", "hateful-memes", "--data-path",
            str(tmp / "memes"), "--target", "0:0.0", "--n-max", "64", "--batch-size", "64",
            "--d-max", "1", "--timeout", "600"]
    _table(f"tiny LLaVA guard (CPU), {len(bodies)} requests, {min(opts.clients, 16)} clients",
           [run_arm("batching on", args, bodies, min(opts.clients, 16)),
            run_arm("batching off", [*args, "--no-batching"], bodies, min(opts.clients, 16))])


if __name__ == "__main__":
    main()
