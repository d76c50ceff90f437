"""Certify examples into a run directory, row by row, resumable: the local executor and the Python API.

The directory itself (``run.json``, ``results.jsonl``, the lock, repair,
:func:`~hybridcert.rundir.load_run`) and the retry policy shared with the Ray
executor are in :mod:`hybridcert.rundir`.

Every example draws its noise from its own counter-based stream, keyed by
``SeedSequence([seed, index])`` where ``index`` is its position in the split
(:mod:`hybridcert.streams`). A resumed, reordered or distributed run, or one
resumed with another batch size, therefore gives the same numbers. A run
directory written with other noise streams (``settings["stream"]``) is
refused with the reason: its rows could not be reproduced by this version.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ._validation import check_int
from .datasets.base import Split
from .rundir import (
    RESULTS,
    RetryPolicy,
    error_row,
    failed_row,
    label_of,
    prepare_run_dir,
    read_results,
    result_row,
    write_row,
)
from .rundir import locked as locked
from .runsettings import RunSettings
from .smoothing import SmoothedClassifier, as_spec, describe_model
from .spec import EstimationSpec

logger = logging.getLogger(__name__)

__all__ = ["certify_dataset", "certify_split", "run_one"]

def example_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The noise stream of example ``index`` under run seed ``seed``."""
    return np.random.SeedSequence([int(seed), int(index)])


# --------------------------------------------------------------------------- rows


def run_one(smoothed: SmoothedClassifier, index: int, example_id: str, true_label: int,
            x_discrete, x_continuous, spec: EstimationSpec, *, start: float) -> dict:
    """Certify one example with its own noise stream; the row to write.

    An example on which every model call raised is a failed row, not a
    certificate of "abstain": nothing was learned about the model.
    """
    cert = smoothed.certify(x_discrete, x_continuous, spec,
                            random_state=example_seed(spec.seed, index))
    return certificate_row(example_id, true_label, cert, time.perf_counter() - start)


def certificate_row(example_id: str, true_label: int, cert, seconds: float) -> dict:
    """The row of a certificate; an example on which every model call raised is a failed row."""
    if cert.model_calls and cert.errors == cert.model_calls:
        return failed_row(example_id, true_label, cert.settings,
                          f"every model call raised; first error: {cert.first_error}",
                          model_calls=cert.model_calls, errors=cert.errors,
                          abstentions=cert.abstentions, first_error=cert.first_error,
                          seconds=seconds)
    return result_row(example_id, true_label, cert, seconds)


# --------------------------------------------------------------------------- the local executor


def certify_split(
    smoothed: SmoothedClassifier,
    split: Split,
    out: str | os.PathLike,
    settings: dict,
    spec: EstimationSpec,
    *,
    limit: int | None = None,
    progress: bool = True,
    max_retries: int = 2,
) -> Path:
    """Certify the first ``limit`` examples of ``split`` under ``spec``, appending to
    ``out/results.jsonl``; ``settings`` is the run's ``run.json`` (checked on resume).

    Failures follow :class:`~hybridcert.rundir.RetryPolicy`: an example whose
    certification raises is retried ``max_retries`` times, then written as a
    failed row with its error; the run goes on, and the next run into ``out``
    certifies it again. When the first examples all fail the run stops with
    :class:`~hybridcert.rundir.RunStopped`.
    """
    policy = RetryPolicy(max_retries)
    with locked(out) as out:
        todo, bar = open_run(split, out, settings, limit, progress)
        policy.start(len(todo))
        try:
            with (out / RESULTS).open("a") as fh:
                def written(row):
                    write_row(fh, row)
                    bar.update(1)
                    policy.finished(row)

                spent: dict[int, float] = {}
                if spec.resolved_sampling == "sequential":  # looks of many examples share batches
                    spent = certify_scheduled(smoothed, [
                        (i, split.ids[i], label_of(split.y[i]), split.x_discrete[i],
                         split.x_continuous[i]) for i in todo], spec, written)
                    todo = list(spent)
                for i in todo:
                    label, attempt = label_of(split.y[i]), 0
                    # a row's seconds: every attempt, and its share of a failed batched one
                    start = time.perf_counter() - spent.get(i, 0.0)
                    while True:
                        try:
                            row = run_one(smoothed, i, split.ids[i], label, split.x_discrete[i],
                                          split.x_continuous[i], spec, start=start)
                            break
                        except Exception as err:
                            if not policy.retry(attempt):
                                row = error_row(split.ids[i], label, smoothed.settings_for(spec),
                                                err, time.perf_counter() - start)
                                break
                            attempt += 1
                    written(row)
        finally:
            bar.close()
    return out


def certify_scheduled(smoothed: SmoothedClassifier, examples: Sequence[tuple],
                      spec: EstimationSpec, written: Callable[[dict], None]) -> dict[int, float]:
    """Sequential sampling: certify ``examples`` through a :class:`~hybridcert.scheduler.LookScheduler`.

    ``examples`` are ``(index, example_id, label, x_discrete, x_continuous)``
    tuples, ``index`` the example's place in its split. The looks of a window
    of examples share model batches; each example keeps its own noise stream
    (``example_seed(spec.seed, index)``), so its certificate is the one
    :func:`run_one` gives, and its row goes to ``written`` as soon as it
    finishes (resume stays exact). A row's ``seconds`` is the example's share
    of the wall time (:class:`SharedClock`), so the column sums to the time
    spent, as it does for examples certified one at a time. Used by the local
    executor and by every Ray actor. Returns the indices whose certification
    raised, for the caller's one-at-a-time retries, each with the seconds it
    already took (for its row's ``seconds``).
    """
    from .scheduler import LookScheduler

    clock = SharedClock()
    scheduler = LookScheduler(smoothed, spec)
    entered: dict[int, float] = {}

    def inputs():
        for k, (index, _, _, x_d, x_c) in enumerate(examples):
            entered[k] = clock.enter()
            yield x_d, x_c, example_seed(spec.seed, index)

    failed: dict[int, float] = {}
    for k, cert in scheduler.certify_many(inputs(), ordered=False, return_exceptions=True):
        index, example_id, label, _, _ = examples[k]
        seconds = clock.leave(entered.pop(k))
        if isinstance(cert, Exception):
            failed[index] = seconds
            continue
        written(certificate_row(example_id, label, cert, seconds))
    return failed


class SharedClock:
    """Wall time split equally among the examples in flight, so that the shares sum to it.

    Examples batched together overlap in time; a row's own start-to-finish
    time would count the same second many times over. Here every interval is
    divided among the examples in flight during it (the time before the first
    one enters, the scheduler's set-up, goes to that first one). One running
    sum makes :meth:`enter` and :meth:`leave` O(1).
    """

    def __init__(self):
        self._last = time.perf_counter()
        self._share = 0.0   # seconds each example in flight has accrued since the clock started
        self._in_flight = 0

    def _tick(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if self._in_flight:
            self._share += elapsed / self._in_flight
            return 0.0
        return elapsed   # nobody to charge yet

    def enter(self) -> float:
        """An example enters; the mark to give :meth:`leave`."""
        unclaimed = self._tick()
        self._in_flight += 1
        return self._share - unclaimed

    def leave(self, mark: float) -> float:
        """The example entered at ``mark`` leaves; its share of the wall time, in seconds."""
        self._tick()
        self._in_flight -= 1
        return self._share - mark


def open_run(split: Split, out: Path, settings: dict, limit: int | None, progress: bool):
    """Open (or resume) a locked run directory: the indices still to do, a progress bar."""
    # The split's size goes into run.json (not compared on resume) for the report to say
    # whether the run covers the whole split.
    _, done = prepare_run_dir(out, {"split_size": len(split), **settings})
    indices = range(len(split) if limit is None else min(limit, len(split)))
    todo = [i for i in indices if split.ids[i] not in done]
    bar = _progress(total=len(indices), initial=len(indices) - len(todo), enabled=progress)
    return todo, bar


# --------------------------------------------------------------------------- the Python API


def as_split(examples) -> Split:
    """A :class:`~hybridcert.datasets.Split` from the forms :func:`certify_dataset` accepts."""
    if isinstance(examples, Split):
        return examples
    ids = None
    if isinstance(examples, dict):
        ids = examples.get("ids")
        tokens, cont, y = (examples.get("x_discrete"), examples.get("x_continuous"),
                           examples.get("y"))
    elif isinstance(examples, tuple) and len(examples) in (2, 3):
        tokens, cont = examples[0], examples[1]
        y = examples[2] if len(examples) == 3 else None
    elif isinstance(examples, Sequence):
        rows = list(examples)
        if not all(isinstance(r, (tuple, list)) and len(r) in (2, 3) for r in rows):
            raise TypeError("examples as a list must hold (x_discrete, x_continuous[, label]) "
                            "tuples")
        tokens = [r[0] for r in rows]
        cont = [r[1] for r in rows]
        y = [r[2] if len(r) == 3 else None for r in rows]
    else:
        raise TypeError("examples must be a Split, a tuple (x_discrete, x_continuous[, y]) of "
                        "columns, a dict of those columns, or a list of (x_discrete, "
                        f"x_continuous[, label]) tuples; got {type(examples).__name__}")
    count = len(tokens) if tokens is not None else len(cont) if cont is not None else 0
    if count == 0:
        raise ValueError("examples must hold at least one example")
    for name, column in (("x_discrete", tokens), ("x_continuous", cont), ("y", y)):
        if column is not None and len(column) != count:
            raise ValueError(f"examples: {name} has {len(column)} entries, expected {count}")
    tokens = [None] * count if tokens is None else tokens
    cont = [None] * count if cont is None else cont
    labels = np.array([-1 if v is None else int(v) for v in (y if y is not None else
                                                            [None] * count)])
    ids = [str(i) for i in (ids if ids is not None else range(count))]
    if len(set(ids)) != len(ids):
        raise ValueError("examples: ids must be unique")
    return Split(ids=ids, x_discrete=tokens, x_continuous=cont, y=labels)


def certify_dataset(
    smoothed: SmoothedClassifier,
    examples,
    *,
    out: str | os.PathLike,
    spec: EstimationSpec | None = None,
    n0: int | None = None,
    n: int | None = None,
    alpha: float | None = None,
    d_max: int | None = None,
    protocol: str | None = None,
    seed: int | None = None,
    sampling: str | None = None,
    n_max: int | None = None,
    targets=None,
    rtol: float | None = None,
    batch_size: int | str | None = None,
    limit: int | None = None,
    name: str = "my-data",
    progress: bool = True,
    report: bool = True,
    max_retries: int = 2,
    model_name: str | None = None,
    model_version: str | None = None,
) -> Path:
    """Certify your own examples with your smoothed classifier into a resumable run directory.

    The same file, rules and report as ``hybridcert certify``: ``out/run.json``
    records the settings (the same record, :class:`~hybridcert.runsettings.RunSettings`),
    ``out/results.jsonl`` one row per example (resume by calling again with
    the same arguments), ``out/report.md`` the summary. Read the rows back
    with :func:`~hybridcert.rundir.load_run`. Every argument is checked before
    the run directory is touched.

    Parameters
    ----------
    smoothed : SmoothedClassifier
    examples
        A tuple of columns ``(x_discrete, x_continuous[, y])``, a dict with
        those keys (and optionally ``ids``), a list of ``(x_discrete,
        x_continuous[, label])`` tuples, or a :class:`~hybridcert.datasets.Split`.
        ``x_discrete`` may be ``None`` for continuous-only smoothing; a missing
        label is recorded as -1.
    out : path
        The run directory.
    spec : EstimationSpec, optional
        The estimation settings (:class:`~hybridcert.spec.EstimationSpec`);
        the keywords below override its fields. Its batch size None (the
        default without a spec) records the classifier's.
    n0, n, alpha, d_max, protocol, sampling, n_max, targets, rtol, batch_size
        As for :meth:`SmoothedClassifier.certify`; ``targets`` (d, r) pairs
        ask exactly these questions ("is the input certified against ``d``
        changes and radius ``r``?") and stop each example as soon as every
        one is certified or out of reach; sequential sampling without them
        decides the report's whole grid.
    seed : int >= 0
        Example ``i`` draws its noise from ``SeedSequence([seed, i])``.
    name : str
        The data set's name in ``run.json`` and the report.
    model_name, model_version : str, optional
        Your model's name and version, recorded in ``run.json`` as its
        fingerprint. Without them the fingerprint is computed
        (:func:`~hybridcert.identity.model_fingerprint`: the model's
        ``describe()``, the hash of a scikit-learn estimator's pickle, of a
        torch module's weights, or of a function's code); give them for a
        model known only by its class name. A resume into ``out`` with other
        examples (``run.json``'s ``data.sha256``) or another model is refused
        with the reason.

    Returns
    -------
    Path of the run directory.

    Examples
    --------
    >>> import numpy as np, tempfile, hybridcert as hc
    >>> from hybridcert.noise import UniformSubstitution
    >>> def brightness(tokens, images):
    ...     return (images.mean(axis=(1, 2)) > 0.5).astype(int)
    >>> smoothed = hc.SmoothedClassifier(brightness, sigma=0.25,
    ...     discrete_noise=UniformSubstitution(beta=0.25, vocab_size=100))
    >>> rng = np.random.default_rng(0)
    >>> tokens, images = rng.integers(0, 100, (4, 6)), rng.random((4, 8, 8)).round()
    >>> run = hc.certify_dataset(smoothed, (tokens, images, [1, 0, 1, 0]), out=tempfile.mkdtemp(),
    ...                          n0=20, n=200, progress=False, report=False)
    >>> frame = hc.load_run(run)
    >>> len(frame), frame["id"].is_unique, int(frame["failed"].sum())
    (4, True, 0)
    """
    from .identity import model_fingerprint, split_sha256

    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError("smoothed must be a hybridcert.SmoothedClassifier")
    # Every check before anything is written: the spec, the classifier against it, the
    # executor's options, the examples and the budget against their attackable positions.
    spec = as_spec(spec, n0=n0, n=n, alpha=alpha, d_max=d_max, protocol=protocol, seed=seed,
                   sampling=sampling, n_max=n_max, targets=targets, rtol=rtol,
                   batch_size=batch_size)
    if spec.batch_size is None:
        spec = spec.replace(batch_size=smoothed.batch_size)
    smoothed.check_spec(spec)
    RetryPolicy(max_retries)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    split = as_split(examples)
    if spec.d_max is not None:
        count = len(split) if limit is None else min(limit, len(split))
        shortest = min(smoothed.attackable(split.x_discrete[i]) for i in range(count))
        if spec.d_max > shortest:
            raise ValueError(f"d_max must be at most {shortest}, the attackable positions of the "
                             f"shortest example, got {spec.d_max}")
    model = smoothed.base_classifier
    describe_model(model)   # a description JSON cannot hold is refused here, not at a row
    # The run's identity, checked on resume: a hash of the examples, and the model's
    # fingerprint (a name and version given by the user win).
    record = RunSettings.of(
        smoothed, spec, dataset=name, limit=limit,
        model=model_name or getattr(model, "__qualname__", None) or type(model).__qualname__,
        data={"source": "python", "sha256": split_sha256(split)},
        model_fingerprint=model_fingerprint(model, name=model_name, version=model_version))
    out = certify_split(smoothed, split, out, record.to_json(), spec, limit=limit,
                        progress=progress, max_retries=max_retries)
    if report and any(not r["failed"] for r in read_results(out / RESULTS).values()):
        from .report import write_report

        write_report(out)
    return out


def _progress(total: int, initial: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the demo extra; the library works without it
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc="certify", unit="ex", dynamic_ncols=True)


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass
