"""Certify a split across a Ray cluster: one model replica per worker, same results file.

The driver keeps at most ``max_in_flight`` tasks in flight over ``workers``
actors: one example each under fixed sampling; under sequential sampling a
chunk of examples, which the actor certifies through a
:class:`~hybridcert.scheduler.LookScheduler` (their looks share model
batches), returning their rows. Each actor calls the picklable ``builder`` once (for the CLI,
:class:`hybridcert.run.SmoothedBuilder`), so it loads one model replica on its
CPUs or GPU; the driver builds no model and holds only the examples. The driver streams every finished
row into ``results.jsonl`` under the same rules as the local executor
(:mod:`hybridcert.rundir`): settings guard, torn-line repair, resume, one
row per example, and the same retry policy.

Results do not depend on where or in what order examples ran. Each example
draws its noise from ``SeedSequence([seed, index])``, so a Ray run writes the
same rows as a local run, up to line order and the timing field.

Faults:

- A worker that dies loses only the examples it held. Ray restarts the actor,
  and the driver resubmits those examples, to any worker.
- An example whose certification raises (the engine already turns model
  exceptions into abstentions, so this means a broken input or adapter) is
  retried ``max_retries`` times, then written as a failed row with its error.
  The run continues, unless its first examples all fail
  (:class:`~hybridcert.rundir.RetryPolicy`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ._validation import check_int
from .datasets.base import Split
from .rundir import RESULTS, RetryPolicy, error_row, failed_row, label_of, locked, write_row
from .runner import certify_scheduled, open_run, run_one
from .spec import EstimationSpec

logger = logging.getLogger(__name__)

__all__ = ["certify_split_ray"]


def certify_split_ray(
    builder: Callable,
    split: Split,
    out: str | os.PathLike,
    settings: dict,
    spec: EstimationSpec,
    *,
    limit: int | None = None,
    progress: bool = True,
    address: str | None = None,
    workers: int = 2,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    max_in_flight: int | None = None,
    max_retries: int = 2,
    chunk_size: int | None = None,
) -> Path:
    """Like :func:`hybridcert.runner.certify_split`, on Ray actors built by ``builder()``.

    Parameters
    ----------
    builder : picklable callable
        Returns the :class:`~hybridcert.smoothing.SmoothedClassifier`; called
        once in every actor, so each worker holds one model replica.
    spec : EstimationSpec
        The estimation settings, sent whole to every actor.
    address : str, optional
        An existing cluster (``"auto"`` or ``"ray://host:10001"``); by default
        a local Ray instance is started and stopped.
    workers, cpus_per_worker, gpus_per_worker
        Actors and the resources each one reserves (a 7B guard: one GPU each).
    max_in_flight : int, optional
        Tasks submitted but not finished, at most (default ``2 * workers``).
    max_retries : int
        Retries of an example whose certification raised, before a failed row.
    chunk_size : int, optional
        Sequential sampling: examples an actor certifies at once through its
        :class:`~hybridcert.scheduler.LookScheduler`, their looks sharing model
        batches (default: the todo list shared out over ``2 * workers``
        chunks, at most 256). Fixed sampling sends one example per task.
    """
    import ray

    policy = RetryPolicy(max_retries)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    with locked(out) as out:
        todo, bar = open_run(split, out, settings, limit, progress)
        policy.start(len(todo))
        chunk = 1   # fixed sampling: an example per task
        if spec.resolved_sampling == "sequential":
            chunk = chunk_size or max(1, min(256, -(-len(todo) // (2 * workers))))
        started_here = not ray.is_initialized()
        if started_here:
            options = {"include_dashboard": False, "log_to_driver": False,
                       "logging_level": "ERROR", "ignore_reinit_error": True}
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=max(1, round(workers * cpus_per_worker)),
                         num_gpus=round(workers * gpus_per_worker) or None, **options)
        try:
            _drive(ray, builder, split, out, todo, bar, spec, workers=workers,
                   cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                   max_in_flight=max_in_flight, policy=policy, chunk=chunk)
        finally:
            bar.close()
            if started_here:
                ray.shutdown()
    return out


def _drive(ray, builder, split, out, todo, bar, spec, *, workers, cpus_per_worker,
           gpus_per_worker, max_in_flight, policy, chunk) -> None:
    """Keep the actors busy with tasks of ``chunk`` examples and stream their rows into the
    results file, in order of arrival. An example that raised is retried alone."""
    actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
                       max_restarts=-1, max_task_retries=0)(_Worker)
    pool = [actor.remote(builder) for _ in range(workers)]
    limit_in_flight = max_in_flight or 2 * workers
    queue = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
    in_flight: dict = {}  # object ref -> the indices of its task
    attempts = {i: [0, 0] for i in todo}  # failures of certify, worker deaths
    template = None  # certificate-shaped settings of this run, for rows of dead workers
    turn = 0

    def written(row):
        write_row(fh, row)
        bar.update(1)
        policy.finished(row)

    with (out / RESULTS).open("a") as fh:
        while queue or in_flight:
            while queue and len(in_flight) < limit_in_flight:
                task = queue.pop(0)
                worker = pool[turn % len(pool)]
                turn += 1
                ref = worker.certify.remote(
                    task, [split.ids[i] for i in task], [label_of(split.y[i]) for i in task],
                    [split.x_discrete[i] for i in task], [split.x_continuous[i] for i in task],
                    spec)
                in_flight[ref] = task
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            task = in_flight.pop(ref)
            try:
                results, settings = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                for i in task:  # the worker died: retry elsewhere (bounded, not by us)
                    attempts[i][1] += 1
                    if attempts[i][1] > 10:
                        written(failed_row(split.ids[i], label_of(split.y[i]), template,
                                           "the worker died 10 times on this example"))
                    else:
                        queue.insert(0, [i])
                continue
            template = settings or template
            for i, (kind, payload) in zip(task, results, strict=True):
                if kind == "error":
                    if policy.retry(attempts[i][0]):
                        attempts[i][0] += 1
                        queue.insert(0, [i])
                        continue
                    payload = error_row(split.ids[i], label_of(split.y[i]),
                                        settings or template, payload)
                elif payload["failed"]:
                    logger.warning("example %s failed and is recorded as failed: %s",
                                   payload["id"], payload["error"])
                written(payload)


class _Worker:
    """One model replica: builds the smoothed classifier once, then certifies examples."""

    def __init__(self, builder: Callable):
        self.pid = os.getpid()
        try:
            self.smoothed, self.broken = builder(), None
        except Exception as err:  # said in every failed row, rather than an actor restart loop
            self.smoothed, self.broken = None, f"building the model failed: {type(err).__name__}: {err}"

    def certify(self, indices, example_ids, labels, xs_discrete, xs_continuous,
                spec: EstimationSpec):
        """``([(kind, row or error) per example], settings)``: under sequential sampling
        through a :class:`~hybridcert.scheduler.LookScheduler` (the local executor's
        :func:`~hybridcert.runner.certify_scheduled`), else one example at a time."""
        if self.broken:
            return [("error", _WorkerError(self.broken))] * len(indices), None
        settings = self.smoothed.settings_for(spec)
        examples = list(zip(indices, example_ids, labels, xs_discrete, xs_continuous, strict=True))
        out: dict[int, tuple] = {}
        todo = dict.fromkeys(indices, 0.0)   # index -> seconds already spent on it
        if spec.resolved_sampling == "sequential":
            todo = certify_scheduled(self.smoothed, examples, spec,
                                     lambda row: out.__setitem__(row["id"], ("row", row)))
        for index, example_id, label, x_d, x_c in examples:
            if index not in todo:
                continue
            start = time.perf_counter() - todo[index]
            try:
                out[example_id] = ("row", run_one(self.smoothed, index, example_id, label, x_d,
                                                  x_c, spec, start=start))
            except Exception as err:  # reported to the driver, which retries or writes a failed row
                out[example_id] = ("error", _portable(err))
        return [out[example_id] for example_id in example_ids], settings


def _portable(err: Exception) -> Exception:
    """The error as the driver receives it: its type name, message and error counts, picklable
    whatever the original exception holds."""
    copy = _WorkerError(f"{type(err).__name__}: {err}")
    for name in ("calls", "errors", "first_error"):
        setattr(copy, name, getattr(err, name, None))
    return copy


class _WorkerError(Exception):
    """An error in a worker, carried to the driver; its message names the original type."""

    def __init__(self, message: str):
        super().__init__(message)
        self.described = message  # what the failed row records (no second type name)
