"""The run directory: its files, its lock, its rows, and the retry policy of the executors.

Layout of a run directory:

- ``run.json``: the settings. A rerun with other settings is refused (no
  mixed files), and so is a directory that holds rows but no ``run.json``.
- ``results.jsonl``: one JSON object per example, appended, flushed and
  fsynced as each example finishes. Every row has the same columns, whether
  the example was certified or failed (``failed``, ``error``); see
  :func:`result_row` and :func:`failed_row`.
- ``.lock``: held (``fcntl.flock``) by the one process writing the directory;
  a second run into it is refused with the holder's pid and host. The pid is
  erased when the lock is released, so a finished run names no process.

On reopening, the file is repaired under the lock (:func:`read_results`): a
torn last line (a crash mid-write) is cut; a corrupt line elsewhere, or a
JSON object that lacks a row's fields, is reported and moved to
``results.corrupt.jsonl`` with the rows after it kept; a duplicated row is
dropped (the first complete row of an example is kept); rows of failed
examples are dropped so that those examples are certified again. Only what
is missing is then certified.

This module knows nothing of models or the engine: the local executor
(:mod:`hybridcert.runner`), the Ray executor (:mod:`hybridcert.distributed`)
and the report (:mod:`hybridcert.report`) all build on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .sampling import ABSTAIN

logger = logging.getLogger(__name__)

__all__ = ["LOCK", "QUARANTINE", "RESULTS", "SETTINGS", "RetryPolicy", "RunLocked", "RunStopped",
           "SettingsMismatch", "check_resumable", "failed_row", "failed_rows", "load_run", "locked",
           "prepare_run_dir", "read_results", "read_run", "result_row", "write_row"]

RESULTS = "results.jsonl"
SETTINGS = "run.json"
LOCK = ".lock"
QUARANTINE = "results.corrupt.jsonl"
# Settings that change no result; they may differ between the runs that fill one directory.
# The batch size does not change results: the noise streams are counter-based. The split's size
# is recorded for the report (a partial run says so); the data's identity is checked elsewhere.
_IGNORED = {"limit", "report", "out", "batch_size", "split_size"}

# The fields without which a line is not a row: a line lacking one is quarantined like a corrupt
# line (never taken as done). Columns added later (``sampling``, ``runner_up_count``,
# ``first_error``, ``flagged``) are not required, so that older run directories still read.
REQUIRED = {"id": str, "true_label": int, "predicted": int, "abstain": bool, "p_lower": float,
            "count": list, "n": list, "n0": int, "largest_budget": int, "radius": list,
            "abstentions": int, "errors": int, "model_calls": int, "settings": (dict, type(None)),
            "failed": bool}


class SettingsMismatch(ValueError):
    """The run directory holds results made with other (or unknown) settings."""


class RunLocked(ValueError):
    """Another process is writing the run directory."""


class RunStopped(ValueError):
    """The first examples of a run all failed: a systematic error, so the run stopped."""


# --------------------------------------------------------------------------- the directory


@contextlib.contextmanager
def locked(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``out`` (created if needed) while inside.

    The holder's pid and host are written into ``.lock`` for a refused second
    run to name, and erased on release.
    """
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunLocked(f"{out} is being written by {holder}; wait for that run to end or "
                            "use another output directory") from None
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield out
    finally:
        if held:  # still under the lock: erase our pid (never another holder's)
            os.ftruncate(fd, 0)
        os.close(fd)  # closing releases the lock


def prepare_run_dir(out: str | os.PathLike, settings: dict) -> tuple[Path, dict[str, dict]]:
    """Check or record ``run.json`` and repair ``results.jsonl``; the directory and its done rows.

    Call it while holding :func:`locked`. Raises :class:`SettingsMismatch`
    when ``run.json`` records other settings, or is missing beside rows.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded_path = out / SETTINGS
    check_resumable(out, settings)
    if not recorded_path.exists():
        tmp = recorded_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, recorded_path)
    rows = read_results(out / RESULTS, repair=True)
    return out, {k: r for k, r in rows.items() if not r.get("failed")}


def check_resumable(out: str | os.PathLike, settings: dict, *, known_only: bool = False) -> None:
    """Raise :class:`SettingsMismatch` when ``out`` holds results of other settings; writes nothing.

    ``known_only``: compare only the keys of ``settings`` (a check before the
    model is built, which may add keys); :func:`prepare_run_dir` compares all.
    """
    out = Path(out)
    recorded_path, results = out / SETTINGS, out / RESULTS
    comparable = {k: v for k, v in settings.items() if k not in _IGNORED}
    comparable = json.loads(json.dumps(comparable, default=str))  # tuples, numpy scalars
    if recorded_path.exists():
        recorded = json.loads(recorded_path.read_text())
        recorded = {k: v for k, v in recorded.items() if k not in _IGNORED
                    and (not known_only or k in comparable)}
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
    elif results.exists() and results.stat().st_size > 0:
        raise SettingsMismatch(f"{out} holds {RESULTS} but no {SETTINGS}, so the settings "
                               "of its rows are unknown; use another output directory, or "
                               f"delete {results} to start over")


# --------------------------------------------------------------------------- reading rows


def row_problem(row) -> str | None:
    """Why a parsed line is not a row (a missing or mistyped field), or ``None`` if it is one."""
    if not isinstance(row, dict):
        return "not a JSON object"
    missing = sorted(k for k in REQUIRED if k not in row)
    if missing:
        return "missing " + ", ".join(missing)
    for key, kind in REQUIRED.items():
        value = row[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
              else isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        if not ok:
            return f"{key} is {value!r}"
    return None


def read_results(path: str | os.PathLike, repair: bool = False) -> dict[str, dict]:
    """Rows of a ``results.jsonl`` by id, one per example.

    Of several rows of one example the first complete (not failed) row is
    kept: every row of an example is computed from the same noise stream, so
    later copies add nothing. A torn last line is ignored (``repair``: cut
    off). A line that is not JSON, or a JSON object lacking a row's fields
    (:data:`REQUIRED`), is reported (logging warning) and skipped, never the
    rows after it. With ``repair`` such lines are moved to
    ``results.corrupt.jsonl``, duplicates and the rows of failed examples are
    dropped from the file (so that a rerun certifies those examples again and
    ``pandas.read_json(lines=True)`` sees one row per example). Only call
    ``repair`` under :func:`locked`.
    """
    path = Path(path)
    if not path.exists():
        return {}
    rows: dict[str, dict] = {}
    chosen: dict[str, bytes] = {}  # id -> the line of the kept row
    corrupt: list[bytes] = []
    torn = duplicated = False
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            torn = True  # the writer died mid-line: redo that example
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = row_problem(row)
        except ValueError as err:
            problem = str(err)
        if problem is not None:
            corrupt.append(line)
            logger.warning("%s line %d is corrupt (%s); skipped%s", path, number, problem,
                           f", moved to {QUARANTINE}" if repair else "")
            continue
        key = row["id"]
        if key in rows:
            duplicated = True
            if not (rows[key]["failed"] and not row["failed"]):
                continue
        rows[key], chosen[key] = row, line
    if repair and (torn or corrupt or duplicated or any(r["failed"] for r in rows.values())):
        if corrupt:
            with (path.parent / QUARANTINE).open("ab") as fh:
                fh.writelines(corrupt)
        good = [line for key, line in chosen.items() if not rows[key]["failed"]]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(good))
        os.replace(tmp, path)
    return rows


def read_run(run_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The settings (``run.json``) and every row, failed ones included, of a run directory.

    The plain-Python reader that :func:`load_run` and the report build on (no pandas).
    """
    run_dir = Path(run_dir)
    if not (run_dir / SETTINGS).is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {SETTINGS}); run "
                         "`hybridcert certify --out DIR` or `hybridcert.certify_dataset` first")
    settings = json.loads((run_dir / SETTINGS).read_text())
    return settings, list(read_results(run_dir / RESULTS).values())


def load_run(run_dir: str | os.PathLike):
    """The rows of a run directory as a pandas DataFrame, one row per example (no duplicates).

    Failed examples are included with ``failed == True`` and their ``error``;
    the settings of the run are in ``frame.attrs["settings"]``. This is the
    one ``load_run`` (also ``hybridcert.load_run``); :func:`read_run` gives
    the same as plain Python objects.
    """
    import pandas as pd

    settings, rows = read_run(run_dir)
    frame = pd.DataFrame(rows)
    frame.attrs["settings"] = settings
    return frame


def failed_rows(run_dir: str | os.PathLike) -> list[dict]:
    """Rows of the examples of a run directory whose certification failed (with their error)."""
    return [r for r in read_results(Path(run_dir) / RESULTS).values() if r["failed"]]


# --------------------------------------------------------------------------- writing rows


def write_row(fh, row: dict) -> None:
    """Append one row and make it durable before the next example starts."""
    fh.write(json.dumps(row) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def label_of(y) -> int:
    """An example's label as a row records it: ``-1`` when it has none."""
    return -1 if y is None else int(y)


def _decision(settings: dict | None, true_label: int, predicted: int | None) -> dict:
    """The rule-aware columns: ``correct`` (``None`` without a label), ``abstain`` and, under the
    threshold rule, ``flagged``. ``predicted=None``: no decision was made (a failed row)."""
    settings = settings or {}
    labelled = true_label >= 0
    if settings.get("decision") == "threshold":
        # The filter never abstains: it flags the target label or not. ``correct`` says whether
        # that decision is right (flag iff the input is truly of the target label).
        target = settings.get("target_label", 1)
        flagged = None if predicted is None else predicted == target
        right = None if flagged is None or not labelled else flagged == (true_label == target)
        return {"abstain": predicted is None, "correct": right, "flagged": flagged}
    correct = (predicted == true_label) if labelled and predicted is not None else None
    return {"abstain": predicted in (None, ABSTAIN), "correct": correct}


def result_row(example_id: str, true_label: int, cert, seconds: float) -> dict:
    """One line of ``results.jsonl`` (flat where pandas likes it, settings included)."""
    radii = list(cert.radii)
    return {
        "id": example_id,
        "true_label": true_label,
        "predicted": cert.label,
        **_decision(cert.settings, true_label, cert.label),
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


def failed_row(example_id: str, true_label: int, settings: dict | None, error: str, *,
               model_calls: int = 0, errors: int | None = None, abstentions: int | None = None,
               first_error: str | None = None, seconds: float = 0.0) -> dict:
    """The row of an example whose certification failed: the columns of every row.

    ``settings`` are the certificate-shaped settings
    (:meth:`~hybridcert.smoothing.SmoothedClassifier.settings_for`).
    ``errors`` (model calls that raised) defaults to ``model_calls``: a
    failed example learned nothing from its calls.
    """
    logger.warning("example %s failed and is recorded as failed: %s", example_id, error)
    errors = model_calls if errors is None else int(errors)
    return {
        "id": example_id, "true_label": true_label, "predicted": ABSTAIN,
        **_decision(settings, true_label, None), "p_lower": 0.0, "count": [], "n": [], "n0": 0,
        "largest_budget": -1, "radius": [],
        "abstentions": errors if abstentions is None else int(abstentions), "errors": errors,
        "model_calls": int(model_calls), "sampling": (settings or {}).get("sampling", "fixed"),
        "runner_up_count": [], "seconds": round(seconds, 6), "settings": settings,
        "failed": True, "error": error, "first_error": first_error or error,
    }


def error_row(example_id: str, true_label: int, settings: dict | None, err: BaseException,
              seconds: float = 0.0) -> dict:
    """The failed row of an exception, with the error counts it carries (if any).

    An engine error may say how many model calls it made and how many raised
    (``calls``, ``errors``, ``first_error`` attributes); they are recorded.
    An error carried from another process may bring its own text
    (``described``: ``"TypeName: message"``).
    """
    calls = getattr(err, "calls", None)
    errors = getattr(err, "errors", None)
    text = getattr(err, "described", None) or f"{type(err).__name__}: {err}"
    return failed_row(example_id, true_label, settings, text,
                      model_calls=int(calls or 0),
                      errors=None if errors is None else int(errors),
                      first_error=getattr(err, "first_error", None), seconds=seconds)


# --------------------------------------------------------------------------- the retry policy


class RetryPolicy:
    """Retries, failed rows and the stop on a systematic error: one policy for every executor.

    An example whose certification raised is retried ``max_retries`` times,
    then recorded as a failed row (:func:`error_row`); the run goes on and the
    next run into the directory certifies it again. But when the first
    ``stop_after`` examples of a run all fail, the error is systematic (a
    model that cannot read these inputs, a broken setting), not an example's:
    :meth:`finished` raises :class:`RunStopped` with the error at once rather
    than trying every example ``max_retries + 1`` times.

    Parameters
    ----------
    max_retries : int >= 0
    stop_after : int >= 1
        How many failed examples, and no success, stop the run.

    Checked on construction, so build it before the run directory is touched.
    """

    def __init__(self, max_retries: int = 2, stop_after: int = 3):
        from ._validation import check_int

        self.max_retries = check_int("max_retries", max_retries, minimum=0)
        self.stop_after = check_int("stop_after", stop_after, minimum=1)
        self.start(None)

    def start(self, todo: int | None) -> RetryPolicy:
        """Begin a run of ``todo`` examples: one that has none left after a failure ends
        normally, with its failed rows, rather than stopping."""
        self.todo, self.done, self.failures = todo, 0, []
        return self

    def retry(self, attempt: int) -> bool:
        """Whether a certification that raised on try ``attempt`` (0 = the first) is tried again."""
        return attempt < self.max_retries

    def finished(self, row: dict) -> None:
        """Count a written row; raise :class:`RunStopped` when the failures are systematic."""
        self.done += 1
        if row["failed"]:
            self.failures.append(row)
        left = self.todo is None or self.done < self.todo
        if left and self.failures and len(self.failures) == self.done >= self.stop_after:
            errors = {r["error"] for r in self.failures}
            same = (f"the same error: {errors.pop()}" if len(errors) == 1
                    else f"errors; the first: {self.failures[0]['error']}")
            raise RunStopped(
                f"stopped: the first {self.done} examples all failed with {same}. This is "
                "systematic (the model, its inputs or the settings), not one bad example; fix "
                "it and rerun the same command (failed examples are retried)")
