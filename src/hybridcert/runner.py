"""Certify a data set split into ``results.jsonl``, row by row, resumable.

Layout of a run directory:

- ``run.json``: the settings. A rerun with other settings is refused (no
  mixed files).
- ``results.jsonl``: one JSON object per example, appended, flushed and
  fsynced as each example finishes. A rerun keeps finished rows, discards a
  torn last line left by a crash, and certifies only what is missing.

Every example draws its noise from its own counter-based stream, keyed by
``SeedSequence([seed, index])`` where ``index`` is its position in the split
(:mod:`hybridcert.streams`). A resumed, reordered or distributed run, or one
resumed with another batch size, therefore gives the same numbers. A run
directory written with other noise streams (``settings["stream"]``) is
refused with the reason: its rows could not be reproduced by this version.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .datasets.base import Split
from .smoothing import ABSTAIN, SmoothedClassifier

RESULTS = "results.jsonl"
SETTINGS = "run.json"
# Settings that change results; anything else (progress bars, report options) may differ.
# The batch size does not change results: the noise streams are counter-based.
_IGNORED = {"limit", "report", "out", "batch_size"}


class SettingsMismatch(ValueError):
    """The run directory holds results made with other settings."""


def example_seed(seed: int, index: int) -> np.random.SeedSequence:
    """The noise stream of example ``index`` under run seed ``seed``."""
    return np.random.SeedSequence([int(seed), int(index)])


def prepare_run_dir(out: str | os.PathLike, settings: dict) -> tuple[Path, dict[str, dict]]:
    """Create or reopen a run directory; return it and the rows already finished (by id).

    Raises :class:`SettingsMismatch` when ``run.json`` records other settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded_path = out / SETTINGS
    comparable = {k: v for k, v in settings.items() if k not in _IGNORED}
    comparable = json.loads(json.dumps(comparable))  # normalise tuples and numpy scalars
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
        tmp = recorded_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, recorded_path)
    return out, read_results(out / RESULTS, repair=True)


def read_results(path: str | os.PathLike, repair: bool = False) -> dict[str, dict]:
    """Rows of a ``results.jsonl`` by id. With ``repair``, a torn last line is cut off the file."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    good_end = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn: the writer died mid-line
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        rows.setdefault(row["id"], row)
        good_end += len(line)
    if repair and good_end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return rows


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
    then written as a failed row with its error; the run goes on.
    """
    out, todo, bar = open_run(split, out, settings, limit, progress)
    kwargs = {"n0": n0, "n": n, "alpha": alpha, "d_max": d_max, "protocol": protocol,
              "seed": seed, "sampling": sampling, "n_max": n_max}
    with (out / RESULTS).open("a") as fh:
        for i in todo:
            for attempt in range(max_retries + 1):
                try:
                    row = run_one(smoothed, i, split.ids[i], int(split.y[i]), split.x_discrete[i],
                                  split.x_continuous[i], start=time.perf_counter(), **kwargs)
                    break
                except Exception as err:
                    if attempt == max_retries:
                        row = failed_row(split.ids[i], int(split.y[i]), settings,
                                         f"{type(err).__name__}: {err}")
            write_row(fh, row)
            bar.update(1)
    bar.close()
    return out


def open_run(split: Split, out, settings: dict, limit: int | None, progress: bool):
    """Open (or resume) a run directory: the directory, the indices still to do, a progress bar."""
    out, done = prepare_run_dir(out, settings)
    indices = range(len(split) if limit is None else min(limit, len(split)))
    todo = [i for i in indices if split.ids[i] not in done]
    bar = _progress(total=len(indices), initial=len(indices) - len(todo), enabled=progress)
    return out, todo, bar


def run_one(smoothed: SmoothedClassifier, index: int, example_id: str, true_label: int,
            x_discrete, x_continuous, *, n0, n, alpha, d_max, protocol, seed,
            start: float, sampling: str = "fixed", n_max: int = 100_000) -> dict:
    """Certify one example with its own noise stream; the row to write."""
    cert = smoothed.certify(x_discrete, x_continuous, n0=n0, n=n, alpha=alpha, d_max=d_max,
                            protocol=protocol, sampling=sampling, n_max=n_max,
                            random_state=example_seed(seed, index))
    return result_row(example_id, true_label, cert, time.perf_counter() - start)


def write_row(fh, row: dict) -> None:
    """Append one row and make it durable before the next example starts."""
    fh.write(json.dumps(row) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def failed_row(example_id: str, true_label: int, settings: dict, error: str) -> dict:
    """The row of an example whose certification kept failing (also said on stderr)."""
    print(f"hybridcert: example {example_id} failed and is recorded as failed: {error}",
          file=sys.stderr, flush=True)
    return {"id": example_id, "true_label": true_label, "failed": True, "error": error,
            "predicted": ABSTAIN, "abstain": True, "correct": False, "settings": settings}


def result_row(example_id: str, true_label: int, cert, seconds: float) -> dict:
    """One line of ``results.jsonl`` (flat where pandas likes it, settings included)."""
    radii = list(cert.radii)
    row = {
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
        "seconds": round(seconds, 6),
        "settings": cert.settings,
    }
    if cert.runner_up:
        row["runner_up_count"] = list(cert.runner_up)
    if cert.first_error:
        row["first_error"] = cert.first_error
    return row


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
