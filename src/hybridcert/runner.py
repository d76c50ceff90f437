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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import DataConfig, EstimationConfig, ExecutorConfig, RunConfig
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
from .smoothing import SmoothedClassifier

logger = logging.getLogger(__name__)

__all__ = ["certify_dataset", "certify_split", "run_one"]

def example_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The noise stream of example ``index`` under run seed ``seed``."""
    return np.random.SeedSequence([int(seed), int(index)])


# --------------------------------------------------------------------------- rows


def run_one(smoothed: SmoothedClassifier, index: int, example_id: str, true_label: int,
            x_discrete, x_continuous, *, n0, n, alpha, d_max, protocol, seed,
            start: float, sampling: str = "fixed", n_max: int = 100_000,
            targets=None) -> dict:
    """Certify one example with its own noise stream; the row to write.

    An example on which every model call raised is a failed row, not a
    certificate of "abstain": nothing was learned about the model.
    """
    cert = smoothed.certify(x_discrete, x_continuous, n0=n0, n=n, alpha=alpha, d_max=d_max,
                            protocol=protocol, sampling=sampling, n_max=n_max, targets=targets,
                            random_state=example_seed(seed, index))
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
    *,
    n0: int,
    n: int,
    alpha: float,
    d_max: int | None,
    protocol: str = "shared",
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    max_retries: int = 2,
    sampling: str = "fixed",
    n_max: int = 100_000,
    targets=None,
) -> Path:
    """Certify the first ``limit`` examples of ``split``, appending to ``out/results.jsonl``.

    Failures follow :class:`~hybridcert.rundir.RetryPolicy`: an example whose
    certification raises is retried ``max_retries`` times, then written as a
    failed row with its error; the run goes on, and the next run into ``out``
    certifies it again. When the first examples all fail the run stops with
    :class:`~hybridcert.rundir.RunStopped`.
    """
    kwargs = {"n0": n0, "n": n, "alpha": alpha, "d_max": d_max, "protocol": protocol,
              "seed": seed, "sampling": sampling, "n_max": n_max, "targets": targets}
    policy = RetryPolicy(max_retries)
    with locked(out) as out:
        todo, bar = open_run(split, out, settings, limit, progress)
        policy.start(len(todo))
        try:
            with (out / RESULTS).open("a") as fh:
                if sampling == "sequential":   # looks of many examples share model batches
                    todo = certify_scheduled(smoothed, split, todo, fh, bar, kwargs, policy)
                for i in todo:
                    label, attempt = label_of(split.y[i]), 0
                    while True:
                        start = time.perf_counter()
                        try:
                            row = run_one(smoothed, i, split.ids[i], label, split.x_discrete[i],
                                          split.x_continuous[i], start=start, **kwargs)
                            break
                        except Exception as err:
                            if not policy.retry(attempt):
                                row = error_row(split.ids[i], label, smoothed.settings_for(
                                    alpha=alpha, protocol=protocol, d_max=d_max,
                                    sampling=sampling), err, time.perf_counter() - start)
                                break
                            attempt += 1
                    write_row(fh, row)
                    bar.update(1)
                    policy.finished(row)
        finally:
            bar.close()
    return out


def certify_scheduled(smoothed: SmoothedClassifier, split: Split, todo: list[int], fh, bar,
                      kwargs: dict, policy: RetryPolicy) -> list[int]:
    """Sequential sampling: certify ``todo`` through a :class:`~hybridcert.scheduler.LookScheduler`.

    The looks of a window of examples share model batches; each example
    keeps its own noise stream (``example_seed``), so its certificate is the
    one :func:`run_one` gives, and a row is appended as soon as it finishes
    (resume stays exact). A row's ``seconds`` runs from the example's entry
    into the window to its last look. Returns the indices whose certification
    raised, for the caller's one-at-a-time retries.
    """
    from .scheduler import LookScheduler

    if kwargs.get("protocol", "shared") != "shared":
        return list(todo)   # refused with the reason by run_one, one example at a time
    options = {k: kwargs[k] for k in ("n0", "alpha", "d_max", "n_max", "targets") if k in kwargs}
    scheduler = LookScheduler(smoothed, **options)
    started: dict[int, float] = {}

    def inputs():
        for i in todo:
            started[i] = time.perf_counter()
            yield split.x_discrete[i], split.x_continuous[i], example_seed(kwargs["seed"], i)

    failed = []
    for k, cert in scheduler.certify_many(inputs(), ordered=False, return_exceptions=True):
        i = todo[k]
        if isinstance(cert, Exception):
            failed.append(i)
            continue
        row = certificate_row(split.ids[i], label_of(split.y[i]), cert,
                              time.perf_counter() - started[i])
        write_row(fh, row)
        bar.update(1)
        policy.finished(row)
    return failed


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
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    d_max: int | None = None,
    protocol: str = "shared",
    seed: int = 0,
    limit: int | None = None,
    name: str = "my-data",
    progress: bool = True,
    report: bool = True,
    max_retries: int = 2,
    sampling: str | None = None,
    n_max: int = 100_000,
    targets=None,
    model_name: str | None = None,
    model_version: str | None = None,
) -> Path:
    """Certify your own examples with your smoothed classifier into a resumable run directory.

    The same file, rules and report as ``hybridcert certify``: ``out/run.json``
    records the settings, ``out/results.jsonl`` one row per example (resume
    by calling again with the same arguments), ``out/report.md`` the summary.
    Read the rows back with :func:`~hybridcert.rundir.load_run`.

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
    n0, n, alpha, d_max, protocol, n_max
        As for :meth:`SmoothedClassifier.certify`.
    sampling : {"fixed", "sequential"}, optional
        Default: ``"sequential"`` when ``targets`` are given, else ``"fixed"``.
    targets : sequence of (d, r), optional
        Sequential sampling asks exactly these questions ("is the input
        certified against ``d`` changes and radius ``r``?") and stops each
        example as soon as every one is certified or out of reach; without
        them it decides the report's whole grid. Recorded in ``run.json``.
    seed : int
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
    from ._version import __version__
    from .identity import model_fingerprint, split_sha256  # issue 20: the run's identity
    from .streams import STREAM_VERSION

    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError("smoothed must be a hybridcert.SmoothedClassifier")
    # The command line's checks, in one place (config.py), before anything is written.
    estimation = EstimationConfig(
        n0=n0, n=n, alpha=alpha, d_max=d_max, protocol=protocol, seed=seed, sampling=sampling,
        n_max=n_max, targets=None if targets is None else tuple(
            tuple(t) if isinstance(t, list | tuple) else t for t in targets))
    RunConfig(estimation=estimation, executor=ExecutorConfig(max_retries=max_retries),
              data=DataConfig(limit=limit)).validate()
    sampling = estimation.resolved_sampling
    split = as_split(examples)
    model = smoothed.base_classifier
    settings = {"dataset": name,
                "model": model_name or getattr(model, "__qualname__", None)  # issue 20: the name
                or type(model).__qualname__,
                # issue 20, the run's identity (checked on resume): the data and the model
                "data": {"source": "python", "sha256": split_sha256(split)},
                "model_fingerprint": model_fingerprint(model, name=model_name,
                                                       version=model_version),
                **smoothed.settings_for(alpha=alpha, protocol=protocol, d_max=d_max,
                                        sampling=sampling),
                "n0": n0, "n": n, "seed": seed, "batch_size": smoothed.batch_size,
                "limit": limit, "hybridcert": __version__}
    for key in ("counted_label", "level", "attack", "base_classifier"):
        settings.pop(key)
    settings["stream"] = STREAM_VERSION
    settings["n_max"] = n_max if sampling == "sequential" else None
    if estimation.targets is not None:
        settings["targets"] = [[int(d), float(r)] for d, r in estimation.targets]
    out = certify_split(smoothed, split, out, settings, n0=n0, n=n, alpha=alpha, d_max=d_max,
                        protocol=protocol, seed=seed, limit=limit, progress=progress,
                        max_retries=max_retries, sampling=sampling, n_max=n_max,
                        targets=estimation.targets)
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
