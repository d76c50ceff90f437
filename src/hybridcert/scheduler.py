"""Cross-input batching of sequential certification: many inputs' looks share model batches.

A sequential certification (:mod:`hybridcert.sequential`) of one input asks
the model for a few samples at a time (8, 8, 16, 16, 44, ... : from one look
at which a decision is possible to the next): on a guard whose forward pass
has a latency floor, most of the wall time is that floor.
:class:`LookScheduler` keeps a window of inputs in flight and, at every
round, serves the pending requests of all of them (each input's next
request, or its label-selection samples under the majority rule) in shared
model batches of up to ``max_batch`` samples. Each input still stops on its
own, and is replaced by the next input.

Same certificates. Sample ``j`` of an input comes from its counter-based
noise stream (:mod:`hybridcert.streams`), whatever its batch-mates, and the
base classifier must label each sample on its own (the engine's documented
requirement, :mod:`hybridcert.smoothing`). The scheduler runs the engine's
own per-input state machine and per-look update (one vectorised
Clopper-Pearson call for all the inputs at a look), so every certificate
equals ``smoothed.certify(x_d, x_c, sampling="sequential", ...)`` run alone,
field by field. The one field that can differ is
``settings["base_classifier"]``, the model's own ``describe()`` read when the
input finishes: a guard that records the forward batch it settled on may
report another one when its batches are fuller. It is a description of the
model, not a claim.

Model errors. A combined batch that raises (or returns bad labels) is served
again input by input through :func:`~hybridcert.sampling.count_labels`, with
its per-sample semantics, so one input's failing sample never changes
another input's labels, and an error is attributed to the input that owns the
sample: if ``count_labels`` raises for an input, only that input fails.

Budgets. :meth:`LookScheduler.submit` takes a call budget ``max_calls`` and a
``deadline``. The scheduler checks both before each request of the input:
it never draws past ``max_calls`` (a request that would pass it ends at its
last look within it), and it starts no request after the deadline (one
started before it finishes: a few looks' worth of samples at most). The
input stops at its last completed look, and its
open targets read ``"undecided"``, never a guess (``settings["sequential"]
["stopped"]`` says why). The certificate stays valid: the running bound is
anytime-valid, so it holds at any stopping time built from the looks,
whatever stopped it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_int
from .record import Certificate
from .sampling import LabelCounts, ModelError, check_labels
from .smoothing import SmoothedClassifier, _Job, as_spec, engine_batch
from .spec import EstimationSpec
from .streams import concat_batches

__all__ = ["LookScheduler"]


@dataclass(eq=False)
class _Work:
    """One input in flight: its job, budgets, and where its result goes."""

    job: _Job | None   # None until the scheduler thread builds it from ``make``
    index: int
    max_calls: int | None = None
    deadline: float | None = None
    future: concurrent.futures.Future | None = None
    error: BaseException | None = None
    parts: list = field(default_factory=list)   # LabelCounts of the current request's pieces
    make: Callable[[], _Job] | None = None

    @functools.cached_property
    def key(self) -> tuple:
        """Inputs with the same key can share a model batch (same sample shapes and types)."""
        return _batch_key(self.job.inputs)


class LookScheduler:
    """Certify many inputs sequentially, their looks interleaved in full model batches.

    Parameters
    ----------
    smoothed : SmoothedClassifier
        Threshold rule or majority rule (binary, or ``multiclass_rule="half"``).
    spec : EstimationSpec, optional
        The run's estimation settings, with sequential sampling; without
        it the keywords below build one (``sampling="sequential"``).
    alpha, d_max, n_max, targets, n0, rtol
        As in :meth:`SmoothedClassifier.certify` with ``sampling="sequential"``;
        they override the spec's fields.
    max_batch : int, optional
        Samples per model call (default ``smoothed.batch_size``).
    window : int, optional
        Inputs in flight at once (default ``max(2, max_batch // 4)``: a round
        of first looks fills one batch). Each keeps one noise block in memory.

    Examples
    --------
    >>> import numpy as np
    >>> from hybridcert import SmoothedClassifier
    >>> def bright(tokens, images):
    ...     return (images.mean(axis=(1, 2)) > 0.5).astype(int)
    >>> smoothed = SmoothedClassifier(bright, sigma=0.25, discrete_noise=None,
    ...                               decision="threshold", tau=0.5)
    >>> inputs = [(None, np.full((4, 4), v), i) for i, v in enumerate([0.9, 0.1, 1.0])]
    >>> certs = list(LookScheduler(smoothed, alpha=0.001, targets=[(0, 0.0)], max_batch=64)
    ...              .certify_many(inputs))
    >>> [c.decisions[(0, 0.0)] for c in certs]
    ['certified', 'dropped', 'certified']
    >>> certs[0] == smoothed.certify(None, np.full((4, 4), 0.9), alpha=0.001, random_state=0,
    ...                              sampling="sequential", targets=[(0, 0.0)])
    True
    """

    def __init__(self, smoothed: SmoothedClassifier, spec: EstimationSpec | None = None, *,
                 alpha: float | None = None, d_max: int | None = None,
                 n_max: int | None = None, targets=None, max_batch: int | None = None,
                 n0: int | None = None, rtol: float | None = None, window: int | None = None):
        if not isinstance(smoothed, SmoothedClassifier):
            raise ValueError(f"smoothed must be a SmoothedClassifier, got {type(smoothed).__name__}")
        self.spec = as_spec(spec, alpha=alpha, d_max=d_max, n_max=n_max, targets=targets, n0=n0,
                            rtol=rtol, sampling=None if spec is not None else "sequential")
        if self.spec.resolved_sampling != "sequential":
            raise ValueError("spec must ask for sequential sampling: the scheduler interleaves "
                             "the looks of sequential certification")
        smoothed.check_spec(self.spec)
        self.smoothed = smoothed
        self.max_batch = engine_batch(self.spec.batch_size, smoothed.batch_size) \
            if max_batch is None else \
            check_int("max_batch", max_batch, minimum=1)
        self.window = max(2, self.max_batch // 4) if window is None else \
            check_int("window", window, minimum=1)
        self._model_lock = threading.Lock()   # one round at a time reaches the model
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._state_lock = threading.Lock()   # _closed, _thread and the queue's last put
        self._wake = threading.Event()

    # ------------------------------------------------------------------ offline

    def certify_many(self, inputs: Iterable[tuple], *, ordered: bool = True,
                     return_exceptions: bool = False,
                     progress: Callable[[int], object] | None = None) -> Iterator:
        """Certify ``(x_discrete, x_continuous, random_state)`` triples, ``window`` at a time.

        Parameters
        ----------
        inputs : iterable of (x_discrete, x_continuous, random_state)
            Read lazily, as places in the window free up.
        ordered : bool
            True: yield certificates in input order. False: yield
            ``(index, certificate)`` as inputs finish.
        return_exceptions : bool
            Yield an input's exception in place of its certificate (bad input,
            a model error that ``count_labels`` raises) instead of raising it.
        progress : callable, optional
            Called with 1 each time an input finishes.
        """
        source = enumerate(inputs)
        active: list[_Work] = []
        waiting: dict[int, object] = {}
        next_out = 0
        exhausted = False
        while True:
            while not exhausted and len(active) < self.window:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    break
                index, (x_d, x_c, random_state) = item
                try:
                    active.append(_Work(self._job(x_d, x_c, random_state), index))
                except Exception as err:
                    if not return_exceptions:
                        raise
                    active.append(_Work(None, index, error=err))
            if not active:
                break
            for work in self._round(active):
                active.remove(work)
                if progress is not None:
                    progress(1)
                result = self._result(work)
                if isinstance(result, BaseException) and not return_exceptions:
                    raise result
                if not ordered:
                    yield work.index, result
                    continue
                waiting[work.index] = result
                while next_out in waiting:
                    yield waiting.pop(next_out)
                    next_out += 1

    # ------------------------------------------------------------------ online

    def submit(self, x_discrete, x_continuous, random_state, *, max_calls: int | None = None,
               deadline: float | None = None) -> concurrent.futures.Future:
        """Queue one input for the background thread; thread-safe. The future gives its certificate.

        Bad budgets raise here. The input itself is checked and prepared
        (``prepare_continuous``: for instance moved to the model's device) by
        the scheduler thread, which alone touches the model; a bad input's
        ``ValueError`` is then the future's, before any model call. ``max_calls`` bounds
        the input's model calls (selection samples included); ``deadline`` is
        a :func:`time.monotonic` time. When either is reached the input stops
        at its last completed look: its open targets are ``"undecided"`` and
        its certificate is valid (the bound is anytime-valid). Starts the
        background thread if needed.
        """
        if self._closed:
            raise RuntimeError("the scheduler is closed")
        if max_calls is not None:
            max_calls = check_int("max_calls", max_calls, minimum=0)
            n0 = self.spec.n0
            if self.smoothed.decision != "threshold" and max_calls < n0:
                raise ValueError(f"max_calls ({max_calls}) must be >= n0 ({n0}): the "
                                 "majority rule selects its label with n0 samples")
        if deadline is not None and not np.isfinite(float(deadline)):
            raise ValueError(f"deadline must be a finite time.monotonic() value, got {deadline!r}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._state_lock:   # close() cannot slip between the check and the put
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._queue.put(_Work(None, -1, max_calls,
                                  None if deadline is None else float(deadline), future,
                                  make=lambda: self._job(x_discrete, x_continuous, random_state)))
            self._start_locked()
        self._wake.set()
        return future

    def start(self) -> LookScheduler:
        """Start the background thread that serves :meth:`submit` (idempotent; reopens)."""
        with self._state_lock:
            self._closed = False
            self._start_locked()
        return self

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="hybridcert-looks",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Finish every submitted input, then stop the background thread.

        A :meth:`submit` racing with ``close`` either lands before it (and is
        finished) or raises ``RuntimeError``: no future is left unresolved.
        """
        with self._state_lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
        with self._state_lock:
            if self._thread is thread:
                self._thread = None

    def __enter__(self) -> LookScheduler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self) -> None:
        active: list[_Work] = []
        while True:
            while len(active) < self.window:
                try:
                    work = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not work.future.set_running_or_notify_cancel():
                    continue
                try:
                    work.job = work.make()
                except Exception as err:   # a bad input fails alone, before any model call
                    work.future.set_exception(err)
                    continue
                active.append(work)
            if not active:
                with self._state_lock:   # no submit can put after this check
                    if self._closed and self._queue.empty():
                        return
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                finished = self._round(active)
            except BaseException as err:  # a scheduler bug must not hang the callers
                for work in active:
                    work.future.set_exception(err)
                active = []
                continue
            for work in finished:
                active.remove(work)
                result = self._result(work)
                if isinstance(result, BaseException):
                    work.future.set_exception(result)
                else:
                    work.future.set_result(result)

    # ------------------------------------------------------------------ one round

    def _job(self, x_discrete, x_continuous, random_state) -> _Job:
        return self.smoothed._job(x_discrete, x_continuous, self.spec,
                                  random_state=random_state)

    @staticmethod
    def _result(work: _Work) -> Certificate | BaseException:
        return work.error if work.error is not None else work.job.certificate()

    def _round(self, active: list[_Work]) -> list[_Work]:
        """Serve one request of every active input in shared batches; the inputs that finished."""
        now = time.monotonic()
        requests = []
        for work in active:
            if work.error is not None:
                continue
            request = work.job.request()
            if request is not None and work.deadline is not None and now >= work.deadline:
                work.job.stop("deadline")
            elif request is not None and work.max_calls is not None and \
                    work.job.calls + request[2] - request[1] > work.max_calls:
                # the looks that fit, as one look at a time would take them; else stop
                if work.job.shorten(work.max_calls - work.job.calls):
                    requests.append((work, *work.job.request()))
                else:
                    work.job.stop("max_calls")
            elif request is not None:
                requests.append((work, *request))
        with self._model_lock:
            for chunk in _chunks(requests, self.max_batch):
                self._classify(chunk)
        served = [w for w, *_ in requests if w.error is None]
        for work in served:
            parts, work.parts = work.parts, []
            try:
                work.job.receive(_merge(parts))
            except ModelError as err:  # too many failed samples: this input fails, not the round
                work.error = err
        _Job.advance([w.job for w in served if w.error is None])
        return [w for w in active if w.error is not None or w.job.request() is None]

    def _classify(self, chunk: list[tuple[_Work, int, int, int]]) -> None:
        """One model call on the pieces of a chunk; each owner gets the counts of its pieces."""
        smoothed, num_classes = self.smoothed, self.smoothed.num_classes
        drawn = []
        for work, phase, start, stop in chunk:
            job = work.job
            drawn.append(smoothed._finish(job.inputs, *job.stream.take(phase, start, stop)))
        sizes = [stop - start for _, _, start, stop in chunk]
        total = sum(sizes)
        model = smoothed.base_classifier
        try:
            labels = check_labels(model(concat_batches([t for t, _ in drawn]),
                                        concat_batches([c for _, c in drawn])), total, num_classes)
        except Exception:   # served again owner by owner: count_labels says whose sample failed
            labels = None
        edges = np.cumsum([0, *sizes])
        for (work, _, start, _), (tok, cont), a, b in zip(chunk, drawn, edges[:-1], edges[1:],
                                                          strict=True):
            cuts = work.job.cuts()   # the looks a request spans are counted apart
            ends = None if cuts is None else np.asarray(cuts) - start
            if labels is not None:
                work.parts.append(LabelCounts.of(labels[a:b], num_classes, ends))
                continue
            try:
                # the one counting loop, bisecting to the samples that fail; one batch of the piece
                work.parts.append(smoothed._count_labels(model, lambda size, d=(tok, cont): d,
                                                         int(b - a), int(b - a), ends))
            except Exception as err:
                if isinstance(err, ModelError):  # the input's counts, not only this piece's
                    err.calls += work.job.calls
                work.error = err


def _chunks(requests, max_batch: int):
    """Pack the requests into model batches of at most ``max_batch`` samples, cutting where needed.

    Only requests with the same batch key share a batch; a request may span
    two batches (its pieces are merged before the job sees them)."""
    by_key: dict[tuple, list] = {}
    for request in requests:
        by_key.setdefault(request[0].key, []).append(request)
    for group in by_key.values():
        chunk, room = [], max_batch
        for work, phase, start, stop in group:
            while start < stop:
                take = min(room, stop - start)
                chunk.append((work, phase, start, start + take))
                start += take
                room -= take
                if room == 0:
                    yield chunk
                    chunk, room = [], max_batch
        if chunk:
            yield chunk


def _merge(parts: list[LabelCounts]) -> LabelCounts:
    """The counts of a request served in several pieces (in sample order)."""
    if len(parts) == 1:
        return parts[0]
    first = next((p.first_error for p in parts if p.first_error is not None), None)
    segments = errors = None
    if parts[0].segments is not None:
        segments = sum(p.segments for p in parts)
        errors = sum(p.segment_errors for p in parts)
    return LabelCounts(sum(p.counts for p in parts), sum(p.abstentions for p in parts),
                       sum(p.errors for p in parts), first, segments, errors)


def _batch_key(inputs) -> tuple:
    def kind(x):
        if x is None:
            return None
        return (type(x).__module__, tuple(x.shape), str(x.dtype), str(getattr(x, "device", "")))

    like = inputs.like  # the user's token container (numpy, torch on a device, a list...)
    return (kind(inputs.tokens), type(like).__module__, str(getattr(like, "device", "")),
            kind(inputs.cont))


