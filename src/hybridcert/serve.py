"""``hybridcert serve``: the smoothed classifier g as an HTTP service, one certificate per answer.

A certificate is a claim about g, not about the base model f; a deployment that
certifies g offline but serves f gets none of the guarantee. This module serves
g itself: each ``POST /v1/classify`` runs sequential CERTIFY
(:meth:`~hybridcert.smoothing.SmoothedClassifier.certify` with
``sampling="sequential"``) on the request's input with the request's own noise
seed, through one :class:`~hybridcert.scheduler.LookScheduler` thread, so that
the looks of concurrent requests share model batches.

FastAPI on uvicorn is the embedded server: it gives the OpenAPI schema from the
pydantic models below (``/openapi.json``, from which clients generate code),
request validation, and a plain ASGI app that Ray Serve can host as well. Both
live in the ``serve`` extra and are imported here only.

Guarantees of an answer:

* Reproducible: ``smoothed.certify(x_d, x_c, sampling="sequential",
  targets=..., alpha=..., n_max=..., random_state=seed)`` on the same input
  gives the same decision and numbers (the scheduler's certificates are those
  of ``certify``; counter-based noise streams). ``seed`` is the client's or
  drawn, and always returned. A per-request limit (``max_calls``,
  ``timeout``) that is reached leaves the open targets ``"undecided"``, never
  a guess; such an answer is reproduced by ``certify`` only with the same stop.
* Fail closed: a model error is a 5xx with the reason
  (:class:`~hybridcert.sampling.ModelError`), never "not flagged"; bad input is
  a 4xx with a one-line reason before any model call; the service keeps
  serving.
* Audited: one JSON line per answer in an append-only log, flushed and fsynced
  before the answer is sent (:class:`AuditLog`); a ``kill -9`` loses at most
  the answers in flight, and a torn last line is cut off on restart.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, whose
# pydantic models are local to create_app (pydantic is imported only when serving).
import asyncio
import base64
import binascii
import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from ._version import __version__
from .sampling import ModelError

logger = logging.getLogger(__name__)

__all__ = ["AuditLog", "ServeOptions", "create_app", "run_server", "settings_sha256"]

API_KEY_ENV = "HYBRIDCERT_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    """How the service runs (the model, noise and targets come from the run configuration).

    Parameters
    ----------
    host, port
        Where uvicorn listens (localhost by default).
    queue_size : int >= 1
        Requests admitted at once (being certified or waiting); one more is
        answered 503 with ``Retry-After``.
    max_calls : int >= 1, optional
        Most model calls of one request (selection samples included).
    timeout : float > 0, optional
        Seconds a request may take; at either limit its open targets are
        ``"undecided"``.
    audit_log : path, optional
        Append-only JSON Lines audit log.
    max_body : int
        Largest request body in bytes (413 above).
    max_text : int
        Longest text of an hf: guard's request, in characters.
    batching : bool
        False: one request's looks at a time reach the model (a benchmark's
        "off" arm); answers are the same.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    queue_size: int = 1024
    max_calls: int | None = None
    timeout: float | None = 30.0
    audit_log: str | None = None
    max_body: int = 8 * 1024 * 1024
    max_text: int = 4096
    batching: bool = True

    def __post_init__(self):
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {self.port!r}")
        for name, low in (("queue_size", 1), ("max_calls", 1), ("max_body", 1), ("max_text", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.timeout is not None and not (np.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, "
                             f"got {self.timeout!r}")


def settings_sha256(settings: dict) -> str:
    """The hash of a settings dict (canonical JSON: sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AuditLog:
    """Append-only JSON Lines: one line per answer, written, flushed and fsynced under a lock.

    On open, a torn last line (a ``kill -9`` in the middle of a write) is cut
    off, so that the file stays a sequence of complete JSON lines.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = _cut_torn_tail(self.path)
        if self.repaired:
            logger.warning("audit log %s: cut a torn last line of %d bytes (an answer in flight "
                           "at a crash)", self.path, self.repaired)
        self._fh = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict]:
        """The complete records of a log (a torn last line is skipped)."""
        out = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def _cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last newline; the bytes cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as fh:
        tail = min(size, 1 << 20)
        fh.seek(size - tail)
        data = fh.read()
        if data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n")
        keep = size - tail + cut + 1 if cut >= 0 else (0 if tail == size else size - tail)
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep


class BadInput(ValueError):
    """A request the service refuses (4xx, one-line reason)."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


class _Service:
    """The model, scheduler, admission counter and audit log behind the routes."""

    def __init__(self, plan, options: ServeOptions, smoothed=None):
        from .scheduler import LookScheduler

        self.plan, self.options = plan, options
        self.smoothed = plan.builder() if smoothed is None else smoothed
        e = plan.config.estimation   # the run's spec; a service answers by sequential sampling
        self.spec = e if e.resolved_sampling == "sequential" else e.replace(sampling="sequential")
        self.alpha, self.d_max, self.n_max = e.alpha, e.d_max, self.spec.resolved_n_max
        self.targets = None if e.targets is None else [tuple(t) for t in e.targets]
        self.scheduler = LookScheduler(self.smoothed, self.spec,
                                       window=None if options.batching else 1).start()
        split = plan.task.split
        self.example_discrete = split.x_discrete[0] if len(split) else None
        self.example_continuous = split.x_continuous[0] if len(split) else None
        self.torch_inputs = plan.builder.torch_inputs
        self.guard = self.smoothed.base_classifier if hasattr(
            self.smoothed.base_classifier, "encode_text") else None
        self.settings = {"run": plan.settings(),
                         "engine": self.smoothed.settings_for(self.spec),
                         "limits": {"max_calls": options.max_calls,
                                    "timeout": options.timeout}}
        self.settings_sha256 = settings_sha256(self.settings)
        self.audit = None if options.audit_log is None else AuditLog(options.audit_log)
        self._admitted = 0
        self._lock = threading.Lock()
        self.ready = True

    # -- admission: a bounded number of requests in the service at once
    def admit(self) -> bool:
        with self._lock:
            if self._admitted >= self.options.queue_size:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        self.ready = False
        self.scheduler.close()
        if self.audit is not None:
            self.audit.close()

    # -- inputs
    def inputs(self, body) -> tuple[object, object, str]:
        """The engine's ``(x_discrete, x_continuous)`` of a request and the input's sha256."""
        if self.guard is not None:
            return self._guard_inputs(body)
        if body.x_discrete is None and self.example_discrete is not None:
            raise BadInput("missing field x_discrete (token ids of the input)")
        if body.x_continuous is None and self.example_continuous is not None:
            raise BadInput("missing field x_continuous (the continuous part of the input)")
        x_d = None if body.x_discrete is None else _like(
            body.x_discrete, self.example_discrete, "x_discrete", integer=True)
        x_c = None if body.x_continuous is None else _like(
            body.x_continuous, self.example_continuous, "x_continuous", integer=False)
        digest = _sha256_arrays(x_d, x_c)
        if x_c is not None and self.torch_inputs:   # as plan.split gives them to certify
            import torch

            x_c = torch.as_tensor(x_c)
        return x_d, x_c, digest

    def _guard_inputs(self, body):
        if body.text is None:
            raise BadInput("missing field text (the user's text for the guard)")
        if len(body.text) > self.options.max_text:
            raise BadInput(f"text is {len(body.text)} characters; at most "
                           f"{self.options.max_text}", 413)
        tokens = np.asarray(self.guard.encode_text(body.text))
        image = None
        if self.smoothed.sigma is not None:
            if body.image is None:
                raise BadInput("missing field image (base64 PNG or JPEG)")
            image = decode_image(body.image, self.example_continuous)
        return tokens, image, _sha256_arrays(tokens, image, text=body.text)

    def answer(self, cert, seed: int, request_id: str, digest: str, latency_ms: float) -> dict:
        decisions = cert.decisions if cert.decisions is not None else {}
        return {
            "request_id": request_id,
            "label": "abstain" if cert.label < 0 else int(cert.label),
            "targets": [{"d": int(d), "r": float(r), "status": status}
                        for (d, r), status in decisions.items()],
            "p_lower": float(cert.p_lower),
            "radii": [float(r) for r in cert.radii],
            "largest_budget": int(cert.largest_budget),
            "model_calls": int(cert.model_calls),
            "errors": int(cert.errors),
            "stopped": (cert.settings.get("sequential") or {}).get("stopped"),
            "latency_ms": round(latency_ms, 3),
            "seed": seed,
            "input_sha256": digest,
            "settings_sha256": self.settings_sha256,
        }


def _like(values, example, name: str, *, integer: bool) -> np.ndarray:
    """A request array in the shape and dtype of the served data set's examples."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a (nested) list of numbers") from None
    if example is not None:
        shape = tuple(example.shape)
        if arr.shape != shape:
            raise BadInput(f"{name} has shape {list(arr.shape)}; this model takes "
                           f"{list(shape)}", 422)
    if not np.isfinite(arr).all():
        raise BadInput(f"{name} must be finite (no NaN or inf)", 422)
    if integer:
        if not np.all(arr == np.round(arr)):
            raise BadInput(f"{name} must hold integer token ids", 422)
        return arr.astype(np.int64)
    dtype = np.float32 if example is None else _numpy_dtype(example)
    return arr.astype(dtype)


def _numpy_dtype(example):
    dtype = getattr(example, "dtype", np.float32)
    if type(example).__module__.startswith("torch"):
        return np.float32 if str(dtype) == "torch.float32" else np.float64
    return dtype


def decode_image(data: str | bytes, example) -> np.ndarray:
    """A base64 PNG/JPEG (or raw bytes) as an ``(H, W, 3)`` float32 image in [0, 1].

    Refused (:class:`BadInput`) when the bytes are not an image, or the image is
    not the size of the served data set's images (no silent resize: the
    certificate is about the pixels the model sees).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise BadInput(f"image must be PNG or JPEG, got {img.format}", 415)
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError):
        raise BadInput("image bytes are not a PNG or JPEG image", 415) from None
    if example is not None and tuple(rgb.shape) != tuple(example.shape):
        raise BadInput(f"image is {rgb.shape[1]}x{rgb.shape[0]}; this guard takes "
                       f"{example.shape[1]}x{example.shape[0]}", 422)
    return rgb


def _sha256_arrays(*arrays, text: str | None = None) -> str:
    h = hashlib.sha256()
    if text is not None:
        h.update(text.encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the app


def create_app(plan, options: ServeOptions | None = None, *, smoothed=None):
    """The FastAPI app serving ``plan``'s smoothed classifier (:func:`hybridcert.run.plan`).

    ``smoothed`` replaces ``plan.builder()`` (a test's failing model, a replica's).
    """
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    options = options or ServeOptions()

    class ClassifyRequest(BaseModel):
        """One input: a guard's text (+ image), or the arrays of the demo and table models."""

        text: str | None = Field(None, description="user text (hf: guards)")
        image: str | None = Field(None, description="base64 PNG or JPEG (hf: image guards); "
                                  "/v1/classify/form takes the file itself")
        x_discrete: list[int] | None = Field(None, description="token ids / table codes")
        x_continuous: list | None = Field(None, description="continuous part, nested lists")
        seed: int | None = Field(None, ge=0, lt=2**63,
                                 description="noise seed; drawn when absent, always returned")

    class TargetStatus(BaseModel):
        d: int
        r: float
        status: str = Field(description="certified, dropped or undecided")

    class ClassifyResponse(BaseModel):
        request_id: str
        label: int | str = Field(description="the smoothed label, or 'abstain'")
        targets: list[TargetStatus]
        p_lower: float
        radii: list[float] = Field(description="r*(d) for d = 0..d_max")
        largest_budget: int
        model_calls: int
        errors: int
        stopped: str | None = Field(None, description="max_calls or deadline, when a limit "
                                    "stopped the request (open targets are undecided)")
        latency_ms: float
        seed: int
        input_sha256: str
        settings_sha256: str

    service_box: dict = {}
    box_lock = threading.Lock()

    def get_service() -> _Service:
        """The service, built on first use (a Ray Serve replica has no lifespan of ours)."""
        with box_lock:
            if "service" not in service_box:
                service_box["service"] = _Service(plan, options, smoothed)
            return service_box["service"]

    async def lifespan(app):
        get_service()   # uvicorn: load the model before the first request
        try:
            yield
        finally:
            with box_lock:
                service = service_box.pop("service", None)
            if service is not None:
                service.close()

    app = FastAPI(title="hybridcert", version=__version__, lifespan=lifespan,
                  description="A certified guard: the smoothed classifier's decision and its "
                              "certificate for each request.")

    def one_line(status: int, reason: str, headers: dict | None = None):
        return JSONResponse({"detail": " ".join(str(reason).split())}, status_code=status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):  # one line: the first problem
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return one_line(422 if first.get("type") != "json_invalid" else 400,
                        f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.middleware("http")
    async def _guards(request: Request, call_next):
        key = os.environ.get(API_KEY_ENV)
        if key and request.url.path.startswith("/v1/"):
            given = request.headers.get("x-api-key") or \
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), key.encode()):
                return one_line(401, "missing or wrong API key (X-API-Key header)")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > options.max_body):
            return one_line(413, f"request body over {options.max_body} bytes")
        return await call_next(request)

    @app.get("/health")
    async def health():
        try:
            ready = get_service().ready
        except Exception as err:   # a model that does not load: live, not ready
            logger.warning("not ready: %s: %s", type(err).__name__, err)
            ready = False
        return JSONResponse({"live": True, "ready": ready}, status_code=200 if ready else 503)

    @app.get("/v1/info")
    async def info():
        service = get_service()
        import platform

        return {"hybridcert": __version__, "python": platform.python_version(),
                "model": plan.config.model.model, "dataset": plan.config.data.dataset,
                "settings": service.settings, "settings_sha256": service.settings_sha256,
                "targets": service.targets, "alpha": service.alpha, "n_max": service.n_max,
                "limits": {"max_calls": options.max_calls, "timeout": options.timeout,
                           "queue_size": options.queue_size, "max_body": options.max_body}}

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyRequest):
        return await _classify(get_service(), body, one_line)

    @app.post("/v1/classify/form", response_model=ClassifyResponse)
    async def classify_form(text: Annotated[str | None, Form()] = None,
                            image: Annotated[UploadFile | None, File()] = None,
                            seed: Annotated[int | None, Form(ge=0, lt=2**63)] = None):
        """The guard's request as multipart/form-data: ``text``, an ``image`` file, ``seed``."""
        data = None if image is None else await image.read()
        body = ClassifyRequest.model_construct(text=text, image=data, x_discrete=None,
                                               x_continuous=None, seed=seed)
        return await _classify(get_service(), body, one_line)

    return app


async def _classify(service: _Service, body, one_line):
    start = time.perf_counter()
    request_id = uuid.uuid4().hex
    try:
        x_d, x_c, digest = service.inputs(body)
    except BadInput as err:
        return one_line(err.status, str(err))
    if not service.admit():
        return one_line(503, f"queue full ({service.options.queue_size} requests); retry",
                        {"Retry-After": "1"})
    try:
        seed = body.seed if body.seed is not None else secrets.randbelow(2**63)
        o = service.options
        deadline = None if o.timeout is None else time.monotonic() + o.timeout
        try:
            future = service.scheduler.submit(x_d, x_c, seed, max_calls=o.max_calls,
                                              deadline=deadline)
        except ValueError as err:   # the engine's own refusal of this input
            return one_line(422, str(err))
        try:
            cert = await asyncio.wrap_future(future)
        except ModelError as err:   # fail closed: never an answer of "safe"
            logger.warning("request %s: model error: %s", request_id, err)
            return one_line(500, f"model error: {err}")
        except ValueError as err:
            return one_line(422, str(err))
        except Exception as err:
            logger.exception("request %s failed", request_id)
            return one_line(500, f"{type(err).__name__}: {err}")
        answer = service.answer(cert, seed, request_id, digest,
                                (time.perf_counter() - start) * 1e3)
        if service.audit is not None:
            record = {**answer, "time": time.time(), "certificate": cert.to_dict()}
            await asyncio.get_running_loop().run_in_executor(None, service.audit.write, record)
        return answer
    finally:
        service.release()


def run_server(plan, options: ServeOptions) -> None:
    """Serve ``plan`` with uvicorn until interrupted."""
    import uvicorn

    if options.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(API_KEY_ENV):
        logger.warning("listening on %s without an API key (set %s)", options.host, API_KEY_ENV)
    app = create_app(plan, options)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning",
                # above the admission bound, so that a full queue answers with our 503
                limit_concurrency=options.queue_size + 64)


def options_from_args(args) -> ServeOptions:
    """The :class:`ServeOptions` of a ``hybridcert serve`` namespace."""
    fields = {f.name for f in dataclasses.fields(ServeOptions)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if getattr(args, "no_batching", False):
        given["batching"] = False
    return ServeOptions(**given)
