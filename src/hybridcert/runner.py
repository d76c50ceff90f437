"""Certify examples into ``results.jsonl``, row by row, resumable: the results file and its rules.

Layout of a run directory:

- ``run.json``: the settings. A rerun with other settings is refused (no
  mixed files), and so is a directory that holds rows but no ``run.json``.
- ``results.jsonl``: one JSON object per example, appended, flushed and
  fsynced as each example finishes. Every row has the same columns, whether
  the example was certified or failed (``failed``, ``error``).
- ``.lock``: held (``fcntl.flock``) by the one process writing the directory;
  a second run into it is refused with the holder's pid and host.

On reopening, the file is repaired under the lock: a torn last line (a crash
mid-write) is cut; a corrupt line elsewhere is reported and moved to
``results.corrupt.jsonl`` with the rows after it kept; rows of failed examples
are dropped so that those examples are certified again. Only what is missing
is then certified.

Every example draws its noise from its own counter-based stream, keyed by
``SeedSequence([seed, index])`` where ``index`` is its position in the split
(:mod:`hybridcert.streams`). A resumed, reordered or distributed run, or one
resumed with another batch size, therefore gives the same numbers. A run
directory written with other noise streams (``settings["stream"]``) is
refused with the reason: its rows could not be reproduced by this version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .datasets.base import Split
from .sampling import ABSTAIN
from .smoothing import SmoothedClassifier

logger = logging.getLogger(__name__)

__all__ = ["RunLocked", "SettingsMismatch", "certify_dataset", "certify_split", "load_run",
           "read_results"]

RESULTS = "results.jsonl"
SETTINGS = "run.json"
LOCK = ".lock"
QUARANTINE = "results.corrupt.jsonl"
# Settings that change no result; they may differ between the runs that fill one directory.
# The batch size does not change results: the noise streams are counter-based.
_IGNORED = {"limit", "report", "out", "batch_size"}


class SettingsMismatch(ValueError):
    """The run directory holds results made with other (or unknown) settings."""


class RunLocked(ValueError):
    """Another process is writing the run directory."""


def example_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The noise stream of example ``index`` under run seed ``seed``."""
    return np.random.SeedSequence([int(seed), int(index)])


# --------------------------------------------------------------------------- the directory


@contextlib.contextmanager
def locked(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``out`` (created if needed) while inside."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunLocked(f"{out} is being written by {holder}; wait for that run to end or "
                            "use another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield out
    finally:
        os.close(fd)  # closing releases the lock


def prepare_run_dir(out: str | os.PathLike, settings: dict) -> tuple[Path, dict[str, dict]]:
    """Check or record ``run.json`` and repair ``results.jsonl``; the directory and its rows.

    Call it while holding :func:`locked`. Raises :class:`SettingsMismatch`
    when ``run.json`` records other settings, or is missing beside rows.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded_path = out / SETTINGS
    results = out / RESULTS
    comparable = {k: v for k, v in settings.items() if k not in _IGNORED}
    comparable = json.loads(json.dumps(comparable, default=str))  # tuples, numpy scalars
    if recorded_path.exists():
        recorded = json.loads(recorded_path.read_text())
        recorded = {k: v for k, v in recorded.items() if k not in _IGNORED}
        if "stream" in comparable and recorded.get("stream") != comparable["stream"]:
            raise SettingsMismatch(
                f"{out} holds results drawn with other noise streams "
                f"({recorded.get('stream') or 'the batch-size-dependent streams of hybridcert <= 0.1'}"
                f", this version draws {comparable['stream']}): the same example would get other "
                "noise, so the run cannot be resumed or extended; use another output directory")
        if recorded != comparable:
            diff = sorted(k for k in set(recorded) | set(comparable)
                          if recorded.get(k) != comparable.get(k))
            detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {comparable.get(k)!r}" for k in diff)
            raise SettingsMismatch(f"{out} holds results made with other settings ({detail}); "
                                   "use another output directory or the same settings")
    else:
        if results.exists() and results.stat().st_size > 0:
            raise SettingsMismatch(f"{out} holds {RESULTS} but no {SETTINGS}, so the settings "
                                   "of its rows are unknown; use another output directory, or "
                                   f"delete {results} to start over")
        tmp = recorded_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, recorded_path)
    rows = read_results(results, repair=True)
    return out, {k: r for k, r in rows.items() if not r.get("failed")}


def read_results(path: str | os.PathLike, repair: bool = False) -> dict[str, dict]:
    """Rows of a ``results.jsonl`` by id; a later successful row replaces a failed one.

    A torn last line is ignored (``repair``: cut off). A corrupt line before
    the end is reported (logging warning) and skipped, never the rows after
    it; with ``repair`` it is moved to ``results.corrupt.jsonl``, and rows of
    failed examples are dropped from the file so that a rerun certifies them
    again. Only call ``repair`` under :func:`locked`.
    """
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    keep: list[bytes] = []
    corrupt: list[bytes] = []
    torn = False
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if not line.endswith(b"\n"):
            torn = True  # the writer died mid-line: redo that example
            break
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise ValueError("not a row with a string id")
        except ValueError as err:
            if line.strip():
                corrupt.append(line)
                logger.warning("%s line %d is corrupt (%s); skipped%s", path, number, err,
                               f", moved to {QUARANTINE}" if repair else "")
            continue
        if row["id"] not in rows or (rows[row["id"]].get("failed") and not row.get("failed")):
            rows[row["id"]] = row
        keep.append(line)
    if repair and (torn or corrupt or any(r.get("failed") for r in rows.values())):
        if corrupt:
            with (path.parent / QUARANTINE).open("ab") as fh:
                fh.writelines(corrupt)
        good = [line for line in keep if not json.loads(line).get("failed")]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(good))
        os.replace(tmp, path)
    return rows


def load_run(run_dir: str | os.PathLike):
    """The rows of a run directory as a pandas DataFrame, one row per example (no duplicates).

    Failed examples are included with ``failed == True`` and their ``error``;
    the settings of the run are in ``frame.attrs["settings"]``.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    if not (run_dir / SETTINGS).exists():
        raise ValueError(f"{run_dir} is not a run directory (no {SETTINGS})")
    rows = list(read_results(run_dir / RESULTS).values())
    frame = pd.DataFrame(rows)
    frame.attrs["settings"] = json.loads((run_dir / SETTINGS).read_text())
    return frame


# --------------------------------------------------------------------------- rows


def write_row(fh, row: dict) -> None:
    """Append one row and make it durable before the next example starts."""
    fh.write(json.dumps(row) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def run_one(smoothed: SmoothedClassifier, index: int, example_id: str, true_label: int,
            x_discrete, x_continuous, *, n0, n, alpha, d_max, protocol, seed,
            start: float, sampling: str = "fixed", n_max: int = 100_000) -> dict:
    """Certify one example with its own noise stream; the row to write.

    An example on which every model call raised is a failed row, not a
    certificate of "abstain": nothing was learned about the model.
    """
    cert = smoothed.certify(x_discrete, x_continuous, n0=n0, n=n, alpha=alpha, d_max=d_max,
                            protocol=protocol, sampling=sampling, n_max=n_max,
                            random_state=example_seed(seed, index))
    return certificate_row(example_id, true_label, cert, time.perf_counter() - start)


def certificate_row(example_id: str, true_label: int, cert, seconds: float) -> dict:
    """The row of a certificate; an example on which every model call raised is a failed row."""
    if cert.model_calls and cert.errors == cert.model_calls:
        return failed_row(example_id, true_label, cert.settings,
                          f"every model call raised; first error: {cert.first_error}",
                          model_calls=cert.model_calls, seconds=seconds)
    return result_row(example_id, true_label, cert, seconds)


def failed_row(example_id: str, true_label: int, settings: dict | None, error: str, *,
               model_calls: int = 0, seconds: float = 0.0) -> dict:
    """The row of an example whose certification failed: the columns of every row.

    ``settings`` are the certificate-shaped settings
    (:meth:`~hybridcert.smoothing.SmoothedClassifier.describe`).
    """
    logger.warning("example %s failed and is recorded as failed: %s", example_id, error)
    return {
        "id": example_id, "true_label": true_label, "predicted": ABSTAIN, "abstain": True,
        "correct": False, "p_lower": 0.0, "count": [], "n": [], "n0": 0, "largest_budget": -1,
        "radius": [], "abstentions": 0, "errors": 0, "model_calls": model_calls,
        "sampling": (settings or {}).get("sampling", "fixed"), "runner_up_count": [],
        "seconds": round(seconds, 6), "settings": settings, "failed": True, "error": error,
        "first_error": error,
    }


def result_row(example_id: str, true_label: int, cert, seconds: float) -> dict:
    """One line of ``results.jsonl`` (flat where pandas likes it, settings included)."""
    radii = list(cert.radii)
    return {
        "id": example_id,
        "true_label": true_label,
        "predicted": cert.label,
        "abstain": cert.label == ABSTAIN,
        "correct": cert.label == true_label,
        "p_lower": cert.p_lower,
        "count": list(cert.count),
        "n": list(cert.n),
        "n0": cert.n0,
        "largest_budget": cert.largest_budget,
        "radius": radii,
        **{f"radius_d{d}": r for d, r in enumerate(radii)},
        "abstentions": cert.abstentions,
        "errors": cert.errors,
        "model_calls": cert.model_calls,
        "sampling": cert.settings.get("sampling", "fixed"),
        "runner_up_count": list(cert.runner_up),
        "seconds": round(seconds, 6),
        "settings": cert.settings,
        "failed": False,
        "error": None,
        "first_error": cert.first_error,
    }


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
) -> Path:
    """Certify the first ``limit`` examples of ``split``, appending to ``out/results.jsonl``.

    An example whose certification raises is retried ``max_retries`` times,
    then written as a failed row with its error; the run goes on, and the
    next run into ``out`` certifies it again.
    """
    kwargs = {"n0": n0, "n": n, "alpha": alpha, "d_max": d_max, "protocol": protocol,
              "seed": seed, "sampling": sampling, "n_max": n_max}
    with locked(out) as out:
        todo, bar = open_run(split, out, settings, limit, progress)
        with (out / RESULTS).open("a") as fh:
            if sampling == "sequential":   # looks of many examples share model batches
                todo = certify_scheduled(smoothed, split, todo, fh, bar, kwargs)
            for i in todo:
                for attempt in range(max_retries + 1):
                    try:
                        row = run_one(smoothed, i, split.ids[i], _label(split.y[i]),
                                      split.x_discrete[i], split.x_continuous[i],
                                      start=time.perf_counter(), **kwargs)
                        break
                    except Exception as err:
                        if attempt == max_retries:
                            row = failed_row(split.ids[i], _label(split.y[i]),
                                             smoothed.settings_for(
                                                 alpha=alpha, protocol=protocol, d_max=d_max,
                                                 sampling=sampling),
                                             f"{type(err).__name__}: {err}")
                write_row(fh, row)
                bar.update(1)
        bar.close()
    return out


def certify_scheduled(smoothed: SmoothedClassifier, split: Split, todo: list[int], fh, bar,
                      kwargs: dict) -> list[int]:
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
        write_row(fh, certificate_row(split.ids[i], _label(split.y[i]), cert,
                                      time.perf_counter() - started[i]))
        bar.update(1)
    return failed


def open_run(split: Split, out: Path, settings: dict, limit: int | None, progress: bool):
    """Open (or resume) a locked run directory: the indices still to do, a progress bar."""
    _, done = prepare_run_dir(out, settings)
    indices = range(len(split) if limit is None else min(limit, len(split)))
    todo = [i for i in indices if split.ids[i] not in done]
    bar = _progress(total=len(indices), initial=len(indices) - len(todo), enabled=progress)
    return todo, bar


def _label(y) -> int:
    return -1 if y is None else int(y)


def failed_rows(out: str | os.PathLike) -> list[dict]:
    """Rows of the failed examples of a run directory."""
    return [r for r in read_results(Path(out) / RESULTS).values() if r.get("failed")]


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
) -> Path:
    """Certify your own examples with your smoothed classifier into a resumable run directory.

    The same file, rules and report as ``hybridcert certify``: ``out/run.json``
    records the settings, ``out/results.jsonl`` one row per example (resume
    by calling again with the same arguments), ``out/report.md`` the summary.
    Read the rows back with :func:`load_run`.

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
    n0, n, alpha, d_max, protocol
        As for :meth:`SmoothedClassifier.certify`.
    seed : int
        Example ``i`` draws its noise from ``SeedSequence([seed, i])``.
    name : str
        The data set's name in ``run.json`` and the report.

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
    from . import __version__
    from ._validation import check_int, check_open_unit
    from .streams import STREAM_VERSION

    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError("smoothed must be a hybridcert.SmoothedClassifier")
    check_int("n0", n0, minimum=1)
    check_int("n", n, minimum=1)
    check_open_unit("alpha", alpha)
    if d_max is not None:
        check_int("d_max", d_max, minimum=0)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    split = as_split(examples)
    model = smoothed.base_classifier
    settings = {"dataset": name,
                "model": getattr(model, "__qualname__", None) or type(model).__qualname__,
                **smoothed.settings_for(alpha=alpha, protocol=protocol, d_max=d_max),
                "n0": n0, "n": n, "seed": seed, "batch_size": smoothed.batch_size,
                "limit": limit, "hybridcert": __version__}
    for key in ("counted_label", "level", "attack", "base_classifier"):
        settings.pop(key)
    settings["stream"] = STREAM_VERSION
    out = certify_split(smoothed, split, out, settings, n0=n0, n=n, alpha=alpha, d_max=d_max,
                        protocol=protocol, seed=seed, limit=limit, progress=progress,
                        max_retries=max_retries)
    if report and any(not r.get("failed") for r in read_results(out / RESULTS).values()):
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
