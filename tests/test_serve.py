"""``hybridcert serve`` with a real server (uvicorn in a subprocess) and a real HTTP client."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (hybridcert[serve])")
pytest.importorskip("fastapi", reason="the serve extra (hybridcert[serve])")
pytest.importorskip("uvicorn", reason="the serve extra (hybridcert[serve])")
torch = pytest.importorskip("torch", reason="the demo model (hybridcert[demo])")

from hybridcert.cli import build_parser  # noqa: E402
from hybridcert.config import RunConfig  # noqa: E402
from hybridcert.run import plan  # noqa: E402
from hybridcert.serve import AuditLog  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
DEMO = ["--target", "1:0.25", "--target", "0:0.5", "--n-max", "1000", "--alpha", "0.01"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m hybridcert serve ARGS`` on a free port, until stopped."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None):
        self.args, self.port = args, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / f"server-{self.port}.log").open("w")
        environ = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "hybridcert", "serve", *args,
                                      "--port", str(self.port)], env=environ,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not become ready: "
                             + Path(self.log.name).read_text())

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.log.close()


def offline(args: list[str]):
    """The smoothed classifier and settings ``hybridcert certify ARGS`` would use."""
    config = RunConfig.from_args(build_parser().parse_args(["serve", *args]))
    return plan(config), config.estimation


def certify_offline(smoothed, e, x_d, x_c, seed):
    return smoothed.certify(x_d, x_c, sampling="sequential", targets=list(e.targets),
                            alpha=e.alpha, n_max=e.n_max, n0=e.n0, d_max=e.d_max,
                            random_state=seed)


def request_of(x_d, x_c, seed=None) -> dict:
    body = {"x_discrete": np.asarray(x_d).tolist(),
            "x_continuous": np.asarray(x_c, dtype=np.float64).tolist()}
    if seed is not None:
        body["seed"] = seed
    return body


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    server = Server([*DEMO, "--audit-log", str(tmp / "audit.jsonl")], tmp)
    yield server, tmp
    server.stop()


def test_concurrent_answers_match_offline_certify_at_their_seed(demo):
    server, tmp = demo
    p, e = offline(DEMO)
    smoothed, split = p.builder(), p.split
    ids = range(40)

    def ask(i):
        return httpx.post(server.url + "/v1/classify", timeout=120,
                          json=request_of(split.x_discrete[i], split.x_continuous[i],
                                          seed=1000 + i))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, ids))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers][:3]
    for i, answer in zip(ids, answers, strict=True):
        got = answer.json()
        cert = certify_offline(smoothed, e, split.x_discrete[i], split.x_continuous[i], 1000 + i)
        assert got["seed"] == 1000 + i and got["model_calls"] == cert.model_calls
        assert got["label"] == (cert.label if cert.label >= 0 else "abstain")
        assert got["p_lower"] == cert.p_lower and got["radii"] == list(cert.radii)
        assert {(t["d"], t["r"]): t["status"] for t in got["targets"]} == cert.decisions
    # a drawn seed is returned and reproduces the answer too
    drawn = httpx.post(server.url + "/v1/classify", timeout=60,
                       json=request_of(split.x_discrete[0], split.x_continuous[0])).json()
    again = certify_offline(smoothed, e, split.x_discrete[0], split.x_continuous[0],
                            drawn["seed"])
    assert drawn["p_lower"] == again.p_lower and drawn["model_calls"] == again.model_calls
    # every answer is in the audit log, with its certificate and the settings' hash
    records = {r["request_id"]: r for r in AuditLog.read(tmp / "audit.jsonl")}
    for answer in answers:
        record = records[answer.json()["request_id"]]
        assert record["settings_sha256"] == answer.json()["settings_sha256"]
        assert record["certificate"]["model_calls"] == answer.json()["model_calls"]
        assert record["input_sha256"] == answer.json()["input_sha256"]


@pytest.mark.parametrize("send,status,words", [
    (lambda c, u: c.post(u, content=b"{not json", headers={"content-type": "application/json"}),
     400, "JSON"),
    (lambda c, u: c.post(u, json={"x_discrete": list(range(10))}), 400, "x_continuous"),
    (lambda c, u: c.post(u, json={"x_discrete": [1, 2, 3], "x_continuous": [[0.5] * 28] * 28}),
     422, "shape"),
    (lambda c, u: c.post(u, json={"x_discrete": list(range(10)),
                                  "x_continuous": [[0.5] * 27] * 28}), 422, "shape"),
    (lambda c, u: c.post(u, json={"x_discrete": list(range(10)),
                                  "x_continuous": [["a"] * 28] * 28}), 400, "numbers"),
    (lambda c, u: c.post(u, json={"x_discrete": "abc", "x_continuous": []}), 422, "x_discrete"),
    (lambda c, u: c.post(u, content=b"x" * (9 * 1024 * 1024),
                         headers={"content-type": "application/json"}), 413, "bytes"),
])
def test_bad_requests_get_a_4xx_with_one_line_and_the_service_keeps_serving(demo, send, status,
                                                                             words):
    server, _ = demo
    with httpx.Client(timeout=60) as client:
        answer = send(client, server.url + "/v1/classify")
        assert answer.status_code == status, answer.text
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail
        ok = client.post(server.url + "/v1/classify",
                         json={"x_discrete": list(range(10)), "x_continuous": [[0.2] * 28] * 28,
                               "seed": 1})
        assert ok.status_code == 200


def test_info_health_and_openapi(demo):
    server, _ = demo
    info = httpx.get(server.url + "/v1/info").json()
    assert info["model"] == "demo" and info["targets"] == [[1, 0.25], [0, 0.5]]
    assert info["settings"]["engine"]["on_model_error"] == "raise"
    assert httpx.get(server.url + "/health").json() == {"live": True, "ready": True}
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/classify" in schema["paths"] and "ClassifyResponse" in json.dumps(schema)


def test_a_failing_model_is_a_5xx_never_not_flagged(tmp_path):
    pytest.importorskip("sklearn", reason="table models need scikit-learn")
    from sklearn.linear_model import LogisticRegression

    import hybridcert as hc

    data = hc.datasets.load_penguins()
    # Fitted on 5 columns, while the table gives 3 codes and 4 numbers: every call raises.
    five = np.hstack([data.train.x_discrete[:, :1], data.train.x_continuous])
    narrow = LogisticRegression(max_iter=500).fit(five, data.train.y)
    path = tmp_path / "narrow.pkl"
    path.write_bytes(pickle.dumps(narrow))
    args = ["--dataset", "tabular", "--model", f"sklearn:{path}", "--decision", "threshold",
            "--tau", "0.5", "--target", "0:0.1", "--n-max", "200", "--n0", "10"]
    server = Server(args, tmp_path)
    try:
        x_d, x_c = data.test.x_discrete[0], data.test.x_continuous[0]
        for _ in range(2):   # and again: the service keeps serving
            answer = httpx.post(server.url + "/v1/classify", timeout=60,
                                json=request_of(x_d, x_c, seed=0))
            assert answer.status_code == 500 and "model error" in answer.json()["detail"]
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.stop()


def test_restart_after_kill_9_keeps_the_audit_log_readable(tmp_path):
    audit = tmp_path / "audit.jsonl"
    args = [*DEMO, "--audit-log", str(audit)]
    body = {"x_discrete": list(range(10)), "x_continuous": [[0.7] * 28] * 28, "seed": 5}
    server = Server(args, tmp_path)
    first = httpx.post(server.url + "/v1/classify", json=body, timeout=60).json()
    server.stop(signal.SIGKILL)
    with audit.open("a") as fh:   # what a kill -9 in the middle of a write leaves
        fh.write('{"request_id": "torn", "lab')
    server = Server(args, tmp_path)
    try:
        second = httpx.post(server.url + "/v1/classify", json=body, timeout=60).json()
    finally:
        server.stop()
    text = audit.read_text()
    assert text.endswith("\n") and "torn" not in text
    records = [json.loads(line) for line in text.splitlines()]   # every line is whole
    assert [r["request_id"] for r in records] == [first["request_id"], second["request_id"]]
    assert first["p_lower"] == second["p_lower"]   # same seed, same answer


def test_an_api_key_comes_from_the_environment(tmp_path):
    server = Server(DEMO, tmp_path, env={"HYBRIDCERT_API_KEY": "s3cret"})
    try:
        body = {"x_discrete": list(range(10)), "x_continuous": [[0.7] * 28] * 28, "seed": 5}
        assert httpx.post(server.url + "/v1/classify", json=body).status_code == 401
        ok = httpx.post(server.url + "/v1/classify", json=body, timeout=60,
                        headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200   # liveness stays open
    finally:
        server.stop()


@pytest.mark.slow
def test_ray_serve_with_two_replicas_answers_like_certify(tmp_path, model_cache):
    pytest.importorskip("ray.serve", reason="ray[serve] (hybridcert[ray,serve])")
    import ray
    from ray import serve

    import hybridcert
    from hybridcert.serve import ServeOptions
    from hybridcert.serve_ray import deploy

    source = str(Path(hybridcert.__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": source,
                                       "HYBRIDCERT_CACHE": str(model_cache)}})
    try:
        p, e = offline(DEMO)
        port = free_port()
        deploy(p, ServeOptions(port=port), replicas=2, cpus_per_replica=0.5)
        assert len(serve.status().applications["hybridcert"].deployments) == 1
        smoothed, split = p.builder(), p.split
        url = f"http://127.0.0.1:{port}/v1/classify"
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: httpx.post(url, timeout=120, json=request_of(
                split.x_discrete[i], split.x_continuous[i], seed=i)).json(), range(8)))
        for i, got in enumerate(answers):
            cert = certify_offline(smoothed, e, split.x_discrete[i], split.x_continuous[i], i)
            assert got["p_lower"] == cert.p_lower and got["model_calls"] == cert.model_calls
        status = serve.status().applications["hybridcert"].deployments["HybridcertGuard"]
        assert status.replica_states.get("RUNNING") == 2
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    server = Server([*DEMO, "--queue-size", "1", "--n-max", "20000"], tmp_path)
    try:
        body = {"x_discrete": list(range(10)), "x_continuous": [[0.45] * 28] * 28}
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda s: httpx.post(server.url + "/v1/classify", timeout=120,
                                                         json={**body, "seed": s}), range(16)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue full" in busy.json()["detail"]
        again = httpx.post(server.url + "/v1/classify", timeout=120, json={**body, "seed": 0})
        assert again.status_code == 200
    finally:
        server.stop()


def test_guard_images_are_decoded_strictly():
    pytest.importorskip("PIL", reason="image decoding needs pillow (hybridcert[serve])")
    import base64
    import io

    from PIL import Image

    from hybridcert.serve import BadInput, decode_image

    example = np.zeros((8, 8, 3), np.float32)
    pixels = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    image = decode_image(base64.b64encode(png.getvalue()).decode(), example)
    assert image.dtype == np.float32 and np.array_equal(image * 255, pixels.astype(np.float32))
    assert np.array_equal(decode_image(png.getvalue(), example), image)   # multipart bytes
    for data, status, words in [(b"not an image", 415, "PNG or JPEG"),
                                ("%%%", 400, "base64"),
                                (png.getvalue(), 422, "this guard takes 16x16")]:
        with pytest.raises(BadInput, match=words) as info:
            decode_image(data, np.zeros((16, 16, 3)) if status == 422 else example)
        assert info.value.status == status


def _memes(root: Path) -> Path:
    """A two-row Hateful Memes folder (as tests/test_hf.py builds it)."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    rows = []
    for i, (text, label) in enumerate([("how do i mix the powder", 1), ("hello there", 0)]):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"id": i, "img": f"img/{i}.png", "text": text, "label": label})
    (root / "dev_seen.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_the_tiny_llava_guard_serves_text_and_images(tmp_path):
    pytest.importorskip("transformers", reason="hf: guards need the hf extra")
    import base64
    import io

    from PIL import Image

    from hf_tiny import build_tiny_llava
    from hybridcert.serve import decode_image

    try:
        tiny = build_tiny_llava(tmp_path / "llava")
    except ImportError as err:   # a torchvision built for another torch (see test_hf.py)
        pytest.skip(f"transformers' image models do not load here: {err}")
    args = ["--model", f"hf:{tiny}", "--dataset", "hateful-memes", "--data-path",
            str(_memes(tmp_path / "memes")), "--target", "0:0.0", "--n-max", "64",
            "--batch-size", "16", "--d-max", "1", "--max-text", "200"]
    p, e = offline(args)
    shape = p.task.split.x_continuous[0].shape
    pixels = np.full(shape, 128, np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    server = Server(args, tmp_path)
    try:
        url = server.url + "/v1/classify"
        body = {"text": "how do i mix the powder", "image": base64.b64encode(png.getvalue())
                .decode(), "seed": 7}
        got = httpx.post(url, json=body, timeout=300)
        assert got.status_code == 200, got.text
        form = httpx.post(url + "/form", data={"text": body["text"], "seed": "7"},
                          files={"image": ("x.png", png.getvalue(), "image/png")}, timeout=300)
        assert form.json()["p_lower"] == got.json()["p_lower"]
        wrong = io.BytesIO()
        Image.fromarray(np.zeros((shape[0] + 4, shape[1], 3), np.uint8)).save(wrong, "PNG")
        bad = [{**body, "image": base64.b64encode(wrong.getvalue()).decode()},
               {**body, "image": base64.b64encode(b"GIF89a not really").decode()},
               {**body, "text": "x" * 201}, {"image": body["image"]}]
        assert [httpx.post(url, json=b, timeout=60).status_code for b in bad] == \
            [422, 415, 413, 400]
    finally:
        server.stop()
    guard = p.builder()
    cert = certify_offline(guard, e, guard.base_classifier.encode_text(body["text"]),
                           decode_image(body["image"], None), 7)
    assert got.json()["p_lower"] == cert.p_lower
    assert got.json()["model_calls"] == cert.model_calls
