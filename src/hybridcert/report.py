"""``hybridcert report RUN_DIR``: a markdown summary and matplotlib figures of a certification run.

The words follow the decision rule.

- Threshold rule (the safety filter): an input is *flagged* when the lower
  bound on the target label's probability reaches ``tau``, else *not
  flagged*. The certificate says a flag *stays*. Both sides of the filter are
  reported: *certified detection* on the truly unsafe (target-label) inputs
  and *false flags* on the safe ones.
- Majority rule: the certified label, or *abstain*. *Certified accuracy* at
  ``(d, r)`` is the share of examples whose prediction is correct and
  certified against at most ``d`` discrete changes and any continuous shift
  of L2 norm ``<= r``; *clean accuracy* is the share whose smoothed
  prediction (certified or not) is correct.

Each statistic is computed by one function below, which the table and the
figure both call, so the two cannot disagree: :func:`certified_share`,
:func:`radius_summary`, :func:`largest_budget_counts`, :func:`clean_accuracy`,
:func:`tau_tradeoff` and :func:`shown_budget` (budgets beyond the largest one
any example reaches are folded away).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np

from ._format import count_of as _count_of
from ._format import pct as _pct
from ._format import table as _table
from .decision import DecisionRule
from .record import Certificate, recompute
from .rundir import RESULTS, read_run
from .sampling import ABSTAIN

REPORT = "report.md"
FIGURES = ("certified_accuracy.png", "frontier.png")
TRADEOFF = "tau_tradeoff.png"
CALLS_FIGURE = "model_calls.png"


def finished_rows(run_dir: str | os.PathLike) -> tuple[dict, list[dict], int]:
    """The settings, the certified (not failed) rows and the number of failed rows of a run."""
    settings, rows = read_run(run_dir)
    done = [r for r in rows if not r["failed"]]
    if not done:
        raise ValueError(f"{Path(run_dir) / RESULTS} has no certified rows yet")
    return settings, done, len(rows) - len(done)


# ---------------------------------------------------------------------------- the statistics


@cache
def _rule(decision, tau, target, classes) -> DecisionRule:
    return DecisionRule(decision, tau=tau, target_label=target, num_classes=classes)


def rule_of(settings: dict) -> DecisionRule:
    """The :class:`~hybridcert.decision.DecisionRule` a run's settings record."""
    threshold = settings.get("decision") == "threshold"
    target = settings.get("target_label")
    return _rule("threshold" if threshold else "majority",
                 settings.get("tau") if threshold else None,
                 (1 if target is None else int(target)) if threshold else None,
                 int(settings.get("num_classes") or 2))


def is_threshold(settings: dict) -> bool:
    return rule_of(settings).threshold


def target_label(settings: dict) -> int:
    target = settings.get("target_label")
    return 1 if target is None else int(target)


def pools(rows: list[dict], settings: dict) -> dict[str, list[dict]]:
    """The examples each statistic is computed over, by name.

    Threshold rule: ``"unsafe"`` (the rule's evaluation pool: true label =
    target label; certified detection) and ``"safe"`` (every other label;
    false flags). Majority rule: ``"all"``.
    """
    rule = rule_of(settings)
    pool = rule.evaluation_pool(list(rows))
    if rule.threshold:
        inside = {id(r) for r in pool}
        return {"unsafe": pool, "safe": [r for r in rows if id(r) not in inside]}
    return {"all": pool}


def main_pool(rows: list[dict], settings: dict) -> list[dict]:
    """The pool of the headline metric: unsafe examples (threshold) or all of them (majority)."""
    return next(iter(pools(rows, settings).values()))


def is_counted(row: dict, settings: dict) -> bool:
    """Whether the row's certificate counts: a flag (threshold rule; on a safe example that is a
    false flag) or a correct certified label (majority rule)."""
    rule = rule_of(settings)
    if rule.threshold:  # flagged, on either side: a detection or a false flag
        return row["predicted"] == rule.target_label
    return rule.is_certified_hit(row) and row["predicted"] != ABSTAIN


def shown_budget(rows: list[dict]) -> int:
    """The largest budget any example is certified at (0 if none): tables and figures stop there."""
    return max(0, max(int(r["largest_budget"]) for r in rows))


def certified_share(pool: list[dict], settings: dict, radii, d_top: int) -> np.ndarray:
    """``share[d, j]``: the share of ``pool`` whose certificate counts (:func:`is_counted`) at
    budget ``d`` and radius ``radii[j]``, that is ``largest_budget >= d`` and ``r*(d) >= r``.

    Shape ``(d_top + 1, len(radii))``; an empty pool gives zeros.
    """
    radii = np.asarray(radii, dtype=float)
    share = np.zeros((d_top + 1, radii.size))
    for row in pool:
        if is_counted(row, settings):
            for d in range(min(int(row["largest_budget"]), d_top) + 1):
                share[d] += radii <= row["radius"][d]
    return share / max(len(pool), 1)


def radius_summary(pool: list[dict], settings: dict, d_top: int) -> list[dict]:
    """Per budget ``d``: how many examples of ``pool`` are certified at ``d`` and the mean and
    median of their ``r*(d)``. Examples not certified at ``d`` are left out (not counted as 0);
    mean and median are ``nan`` when none is certified."""
    out = []
    for d in range(d_top + 1):
        got = [row["radius"][d] for row in pool
               if is_counted(row, settings) and row["largest_budget"] >= d]
        out.append({"d": d, "certified": len(got),
                    "mean": float(np.mean(got)) if got else float("nan"),
                    "median": float(np.median(got)) if got else float("nan")})
    return out


def largest_budget_counts(pool: list[dict], settings: dict, d_top: int) -> dict[int, int]:
    """Number of examples of ``pool`` by largest certified budget, ``-1`` (none) to ``d_top``."""
    largest = [int(r["largest_budget"]) if is_counted(r, settings) else -1 for r in pool]
    return {d: largest.count(d) for d in range(-1, d_top + 1)}


def counted_label(row: dict) -> int | None:
    """The label whose samples the row counts (``settings["counted_label"]``): the top label of
    the ``n0`` selection samples (majority rule) or the target label (threshold rule), kept when
    the row abstains. ``None`` in rows written before it was recorded."""
    return (row.get("settings") or {}).get("counted_label")


def clean_accuracy(rows: list[dict]) -> float | None:
    """Share of examples whose smoothed prediction without a certificate is the true label.

    The prediction is the label the ``n0`` selection samples picked (:func:`counted_label`),
    certified or not. ``None`` for rows written before that label was recorded.
    """
    labels = [counted_label(r) for r in rows]
    if not rows or None in labels:
        return None
    return float(np.mean([label == r["true_label"] for label, r in zip(labels, rows)]))


def row_certificate(row: dict, settings: dict) -> Certificate:
    """The :class:`~hybridcert.record.Certificate` a result row records (for ``recompute``)."""
    recorded = dict(row["settings"])
    if counted_label(row) is None:  # older rows: the threshold rule's label is the target
        recorded["counted_label"] = (target_label(settings) if is_threshold(settings)
                                     else row["predicted"])
    return Certificate(label=row["predicted"], p_lower=row.get("p_lower", 0.0),
                       radii=tuple(row.get("radius", ())),
                       largest_budget=row.get("largest_budget", -1), count=tuple(row["count"]),
                       n=tuple(row["n"]), n0=row.get("n0", 0),
                       abstentions=row.get("abstentions", 0), errors=row.get("errors", 0),
                       model_calls=row.get("model_calls", 0), settings=recorded,
                       runner_up=tuple(row.get("runner_up_count", ())))


def tau_tradeoff(rows: list[dict], settings: dict, taus, points) -> dict:
    """Both sides of the threshold filter at other thresholds ``tau``, from the recorded counts.

    Every row is recomputed with :func:`~hybridcert.record.recompute` at each
    ``tau`` (no model call). Returns ``{"tau": taus, "false_flags": (T,),
    "detection": (T, len(points))}``: the share of safe examples flagged, and
    the certified detection (:func:`certified_share` of the unsafe examples)
    at each ``(d, r)`` of ``points``. Each ``tau`` is its own filter; choosing
    one from this curve uses these examples, so choose it on held-out data.
    """
    groups = pools(rows, settings)
    taus = [float(t) for t in taus]
    d_top = max(d for d, _ in points)
    radii = sorted({r for _, r in points})

    @cache
    def again(key, tau):  # rows with equal counts and settings share one recomputation
        row = json.loads(key)
        cert = recompute(first_budgets(row_certificate(row, settings), d_top), tau=tau)
        return cert.label, cert.largest_budget, cert.radii

    def recomputed(pool, tau):
        out = []
        for row in pool:
            label, largest, radii_ = again(_count_key(row), tau)
            out.append({"true_label": row["true_label"], "predicted": label,
                        "correct": label == row["true_label"], "largest_budget": largest,
                        "radius": list(radii_)})
        return out

    false_flags, detection = [], []
    for tau in taus:
        safe = recomputed(groups["safe"], tau)
        false_flags.append(np.mean([is_counted(r, settings) for r in safe]) if safe else 0.0)
        share = certified_share(recomputed(groups["unsafe"], tau), settings, radii, d_top)
        detection.append([share[d, radii.index(r)] for d, r in points])
    return {"tau": taus, "false_flags": np.asarray(false_flags, dtype=float),
            "detection": np.asarray(detection, dtype=float).reshape(len(taus), len(points))}


def first_budgets(cert: Certificate, top: int) -> Certificate:
    """The certificate restricted to budgets ``d <= top``, to recompute only those.

    The radius at ``d`` depends on the bound of ``d`` and on the budgets below,
    never above, and the recorded level is kept, so the radii at ``d <= top``
    and the label are those of the whole certificate (``tests/test_report.py``
    compares them). The trade-off reads budgets 0 and 1 of up to 9.
    """
    s = cert.settings
    if s["d_max"] <= top:
        return cert
    keep = 1 if len(cert.count) == 1 else top + 1   # one shared estimate, or one per budget
    return replace(cert, count=cert.count[:keep], n=cert.n[:keep],
                   runner_up=cert.runner_up[:keep], radii=cert.radii[:top + 1],
                   settings={**s, "d_max": top, "attack": s["attack"][:keep]})


def _count_key(row: dict) -> str:
    """What a recomputation depends on (the label, the counts, the settings), as a cache key."""
    keep = ("predicted", "count", "n", "settings")
    return json.dumps({k: row[k] for k in keep if k in row}, sort_keys=True)


# ---------------------------------------------------------------------------- the words


def coverage_sentence(settings: dict, certified: int, failed: int) -> str:
    """Which examples of the split the report covers; a partial run says it is partial.

    The split's size is read from ``run.json`` (``split_size``); runs that did
    not record it are described by their rows only.
    """
    size = settings.get("split_size")
    done = certified + failed
    failed_words = f" ({failed} failed, left out)" if failed else ""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        return f"Certified {certified:,} examples{failed_words}."
    if done >= size:
        return f"Certified {certified:,} of the {size:,} test examples{failed_words}: the whole split."
    limit = settings.get("limit")
    why = (f"--limit {limit}" if isinstance(limit, int) and limit <= done
           else "an unfinished run: rerun the same command to resume")
    return (f"**Partial run**: certified {certified:,} of {size:,} test examples ({why})"
            f"{failed_words}; every number below is over these examples only.")


def attacker_sentence(settings: dict, rows: list[dict]) -> str:
    """What the certificate assumes the attacker can write, in words."""
    kernel = rows[0]["settings"].get("kernel") or {}
    kind = kernel.get("kernel") if isinstance(kernel, dict) else None
    if kind is None:
        return ("No discrete noise: only the continuous part is smoothed, so only budget d = 0 "
                "(no changed token) is certified.")
    if kind == "categorical":
        return "The attacker may set each changed field to any of its categories."
    if kind == "absorbing":
        return ("The attacker may write any token: the mask kernel's certificate does not "
                "depend on which.")
    who = kernel.get("attacker_alphabet", settings.get("attacker_alphabet"))
    size = kernel.get("vocab_size")
    size = f" of {size} tokens" if size else ""
    if who == "any":
        return ("Attacker alphabet `any`: the attacker may write any token, including tokens "
                "outside the noise alphabet; the certificate assumes nothing about the tokenizer.")
    if who == "noise":
        text = (f"Attacker alphabet `noise`: the certificate **assumes** the attacker writes only "
                f"tokens of the noise alphabet{size}. That is an assumption about the tokenizer "
                "and the input channel; a run with `attacker_alphabet = any` needs none.")
        if kernel.get("restricted_alphabet") is False:
            text += (" Here the noise alphabet is the whole vocabulary, so the assumption "
                     "excludes no token id.")
        return text
    return "The attacker's alphabet is not recorded in these rows."


def _settings_line(s: dict) -> str:
    s = {**s, **noise_words(s)}
    keys = ["dataset", "model", "kernel", "beta", "sigma", "decision", "tau", "alpha", "n0", "n",
            "d_max", "threat", "protocol", "seed"]
    if is_threshold(s):
        keys.remove("n0")  # the threshold rule fixes the label: no selection samples are drawn
    if s.get("sampling") == "sequential":  # n is not what it drew: it stopped by itself
        at = keys.index("n")
        keys[at:at + 1] = ["sampling", "targets", "n_max"]
        targets = s.get("targets")   # (d, r) pairs, or "frontier", or radii (documented forms)
        if isinstance(targets, list) and all(isinstance(t, list) and len(t) == 2 for t in targets):
            s["targets"] = ", ".join(f"({d}, {r:g})" for d, r in targets)
    line = "Settings: " + ", ".join(f"{k} = {s[k]}" for k in keys if k in s and s[k] is not None)
    den = (s.get("gaussian") or {}).get("denoiser")
    if isinstance(den, dict):  # denoised smoothing: what post-processed each noisy image
        line += (f". Denoiser: {den.get('name')}, one step at timestep {den.get('timestep')} "
                 f"(noise level {den.get('noise_level')} in its [-1, 1] scale), resolution "
                 f"{den.get('resolution')}")
    return line


def noise_words(settings: dict) -> dict:
    """``kernel``, ``beta`` and ``threat`` of ``run.json`` in words: the recorded kernel and
    threat are their ``describe()`` dicts (``kernel = none``: no token noise, an image-only
    baseline)."""
    kernel, threat = settings.get("kernel"), settings.get("threat")
    words = {"kernel": "none", "beta": None}
    if isinstance(kernel, dict):
        words.update(kernel=kernel.get("kernel"), beta=kernel.get("beta"))
    if isinstance(threat, dict):
        region = threat.get("region")
        words["threat"] = {"L0Anywhere": "l0",
                           "InPlaceSuffix": f"suffix of {threat.get('length')}",
                           "AppendOnly": f"append of {threat.get('max_append')}"}.get(region, region)
    return words


def cost_lines(rows: list[dict], settings: dict) -> list[str]:
    """The model calls actually spent, and how they split into selection and estimation."""
    calls = np.array([r["model_calls"] for r in rows])
    n0 = {int(r["n0"]) for r in rows}
    estimates = {len(r["n"]) for r in rows}
    n = {int(r["n"][0]) for r in rows}
    split = ""
    if len(n0) == len(estimates) == len(n) == 1:
        n0_, k_, n_ = n0.pop(), estimates.pop(), n.pop()
        parts = [f"{n0_:,} selection samples"] if n0_ else []
        parts.append(f"{k_} estimate{'s' if k_ > 1 else ''} of n = {n_:,}")
        split = " = " + " + ".join(parts)
        if is_threshold(settings):
            split += " (the threshold rule's label is fixed, so no selection samples)"
    return [f"- model calls per example: {calls.mean():,.0f}{split}; total {calls.sum():,}"]


def wall_line(rows: list[dict]) -> str:
    """The wall time these rows took: the sum of their ``seconds``, each an example's share."""
    seconds = np.array([r["seconds"] for r in rows])
    return (f"- wall time certifying: {seconds.sum():.1f} s, {seconds.mean():.4f} s per example "
            "(the sum of the rows' `seconds`, each an example's share of the time: examples "
            "batched together split it; with several Ray workers, the sum over workers; model "
            "loading and this report not included; depends on the machine and its load)")


# ---------------------------------------------------------------------------- the report


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.md`` and its figures (``certified_accuracy.png``, ``frontier.png``, and
    under the threshold rule ``tau_tradeoff.png``) into ``run_dir``."""
    run_dir = Path(run_dir)
    settings, rows, failed = finished_rows(run_dir)
    recorded = rows[0].get("settings") or {}
    if "target_label" in recorded:  # the rule the certificates themselves used (one value)
        settings = {**settings, **DecisionRule.from_settings(recorded).describe()}
    threshold = is_threshold(settings)
    sigma = settings.get("sigma") or 1.0
    d_max = len(rows[0]["radius"]) - 1
    d_top = shown_budget(rows)
    radii = [0.0, 0.25 * sigma, 0.5 * sigma, 1.0 * sigma, 1.5 * sigma, 2.0 * sigma, 3.0 * sigma]
    groups = pools(rows, settings)
    main = main_pool(rows, settings)
    tables = {name: certified_share(pool, settings, radii, d_top) for name, pool in groups.items()}
    metric = "certified detection" if threshold else "certified accuracy"
    n_rows = len(rows)

    lines = [f"# Certification report: `{settings.get('dataset', run_dir.name)}`", "",
             _settings_line(settings), "", coverage_sentence(settings, len(rows), failed), "",
             attacker_sentence(settings, rows), ""]
    targets = settings.get("targets")
    if isinstance(targets, list) and targets and all(isinstance(t, list) for t in targets):
        # a run that asked its own (d, r) questions: answer them, nothing else
        return _write_target_report(run_dir, lines, rows, settings, failed)
    lines += ["## Summary", ""]
    if threshold:
        tau = settings.get("tau")
        unsafe, safe = groups["unsafe"], groups["safe"]
        flagged_unsafe = sum(is_counted(r, settings) for r in unsafe)
        flagged_safe = sum(is_counted(r, settings) for r in safe)
        lines += [
            f"The filter flags an input when the lower confidence bound on the probability of "
            f"label {target_label(settings)} (unsafe) reaches tau = {tau}; otherwise the input is "
            "not flagged. A certificate at (d, r) says that a flag stays: no change of at most d "
            "tokens combined with a continuous shift of L2 norm at most r clears it.", "",
            f"- unsafe inputs flagged: {_count_of(flagged_unsafe, len(unsafe))}; "
            f"not flagged (missed): {len(unsafe) - flagged_unsafe}",
            f"- safe inputs flagged (false flags): {_count_of(flagged_safe, len(safe))}; "
            f"not flagged: {len(safe) - flagged_safe}",
        ]
    else:
        abstain = sum(r["predicted"] == ABSTAIN for r in rows)
        clean = clean_accuracy(rows)
        lines += [
            "The smoothed classifier predicts its most probable label, certified when the lower "
            "confidence bound on its probability exceeds 1/2; otherwise it abstains.", "",
            f"- {metric} at d = 0, r = 0: {_pct(tables['all'][0, 0])} of {n_rows}",
            "- clean accuracy (the smoothed prediction, certified or not, is correct): "
            + (_pct(clean) if clean is not None else "not recorded in these rows"),
            f"- abstain (no certified label): {_count_of(abstain, n_rows)}",
        ]
    folded = (f"Budgets d = {d_top + 1} to {d_max} are left out of every table and figure: "
              "no example is certified there." if d_top < d_max else "")
    lines += ["", folded, ""] if folded else [""]

    def share_table(name, pool, what):
        lines.extend([f"Share (and number) of the {len(pool)} {what} at discrete budget d (rows) "
                      "and L2 radius r (columns), that is with r*(d) >= r.", ""])
        lines.extend(_table(["d", *(f"r = {r:.3g}" for r in radii)],
                            [[str(d), *(f"{_pct(v)} ({round(v * len(pool))})"
                                        for v in tables[name][d])]
                             for d in range(d_top + 1)]))
        lines.append("")

    if threshold:
        lines += ["## Certified detection on unsafe inputs", ""]
        share_table("unsafe", groups["unsafe"], "unsafe inputs flagged and certified")
        lines += ["## False flags on safe inputs", "",
                  "The other side of the filter: safe inputs flagged, and how robustly (the same "
                  "certificate, on inputs that should not be flagged). The r = 0, d = 0 column is "
                  "the false-flag rate.", ""]
        share_table("safe", groups["safe"], "safe inputs flagged and certified")
        lines += _tradeoff_section(run_dir, rows, settings, d_top, sigma)
    else:
        lines += ["## Certified accuracy", ""]
        share_table("all", groups["all"], "examples predicted correctly and certified")

    stats = radius_summary(main, settings, d_top)
    who = "unsafe inputs flagged" if threshold else "examples predicted correctly"
    lines += ["## Certified radius per budget", "",
              f"Mean and median of r*(d) over the {who} and certified at d; examples not "
              "certified at d are left out (not counted as 0). The red line of `frontier.png` is "
              "this median.", ""]
    lines += _table(["d", "certified", "mean r*(d)", "median r*(d)"],
                    [[str(s["d"]), str(s["certified"]), _num(s["mean"]), _num(s["median"])]
                     for s in stats])
    counts = largest_budget_counts(main, settings, d_top)
    lines += ["", "## Largest certified budget", "",
              f"Of the {len(main)} " + ("unsafe inputs" if threshold else "examples")
              + "; -1: " + ("not flagged" if threshold else "no correct certified label")
              + ". The right panel of `frontier.png` draws these counts.", ""]
    lines += _table(["largest d", "examples"], [[str(d), str(k)] for d, k in counts.items()])
    lines += ["", "## Cost", "", *cost_lines(rows, settings),
        f"- examples whose certification failed (left out above): {failed}",
        f"- noisy samples the base model abstained on: {sum(r['abstentions'] for r in rows)}, "
        f"of which lost to exceptions: {sum(r['errors'] for r in rows)}",
        wall_line(rows),
        "", "## Figures", ""]
    _plot_shares(run_dir / FIGURES[0], rows, settings, d_top)
    _plot_frontier(run_dir / FIGURES[1], rows, settings, d_top)
    plot_calls_histogram(run_dir / CALLS_FIGURE, rows)
    if threshold:
        lines += ["`certified_accuracy.png`: left, certified detection on the "
                  f"{len(groups['unsafe'])} unsafe inputs; right, false flags on the "
                  f"{len(groups['safe'])} safe inputs; one line per budget d, dots at the "
                  "tables' radii (lines of budgets at 0 overlap on the axis).", ""]
    else:
        lines += [f"`certified_accuracy.png`: certified accuracy of the {n_rows} examples, one "
                  "line per budget d, dots at the table's radii; dashed: clean accuracy.", ""]
    lines += [f"![{metric} versus radius]({FIGURES[0]})", "",
              f"`frontier.png`: left, r*(d) of every one of the {who} and certified (grey, "
              "all drawn; a lone dot is an example certified at d = 0 only) and the median of "
              "the radius table (red); right, the largest-budget table.", "",
              f"![certified frontier]({FIGURES[1]})", ""]
    if threshold:
        lines += ["`tau_tradeoff.png`: the table of the previous section as curves.", "",
                  f"![detection versus false flags across tau]({TRADEOFF})", ""]
    lines += [f"`{CALLS_FIGURE}`: model calls per example (sequential sampling stops early on "
              "settled examples; when every example costs the same it is one bar).", "",
              f"![model calls per example]({CALLS_FIGURE})", ""]
    out = run_dir / REPORT
    out.write_text("\n".join(lines))
    return out


def target_answers(rows: list[dict], settings: dict) -> list[dict]:
    """Per question ``(d, r)`` of a target run and per pool: how many examples are certified
    (and count: flagged, or a correct label), dropped (the bound proves the question cannot be
    certified) or undecided (``n_max`` or a budget reached first)."""
    questions = [(int(d), float(r)) for d, r in settings["targets"]]
    out = []
    for name, pool in pools(rows, settings).items():
        for q, (d, r) in enumerate(questions):
            status = [((row.get("settings") or {}).get("sequential") or {}).get("status") or []
                      for row in pool]
            told = [st[q] if q < len(st) else "undecided" for st in status]
            certified = sum(t == "certified" and is_counted(row, settings)
                            for t, row in zip(told, pool))
            out.append({"pool": name, "d": d, "r": r, "examples": len(pool),
                        "certified": certified,
                        "certified_other": sum(t == "certified" for t in told) - certified,
                        "dropped": sum(t == "dropped" for t in told),
                        "undecided": sum(t == "undecided" for t in told)})
    return out


def _write_target_report(run_dir: Path, lines: list[str], rows, settings, failed) -> Path:
    """The report of a ``--target`` run: each question answered, the calls it took."""
    threshold = is_threshold(settings)
    what = {"unsafe": "unsafe inputs", "safe": "safe inputs", "all": "examples"}
    hit = "flagged and certified" if threshold else "predicted correctly and certified"
    lines += ["## The questions asked", "",
              "Each question (d, r): is the input certified against at most d changed tokens "
              "combined with a continuous shift of L2 norm at most r? Sequential sampling stopped "
              "each example as soon as every question was certified or proved out of reach "
              "(dropped); undecided: n_max was reached first. Only these questions were decided: "
              "the run holds no grid of other radii.", ""]
    body = []
    for a in target_answers(rows, settings):
        n = a["examples"]
        body.append([what[a["pool"]], str(a["d"]), _num(a["r"]),
                     f"{_pct(a['certified'] / n) if n else '-'} ({a['certified']} of {n})",
                     str(a["dropped"]), str(a["undecided"])])
    lines += _table(["examples", "d", "r", hit, "dropped", "undecided at n_max"], body)
    if threshold:
        lines += ["", "On safe inputs a certified flag is a false flag that an attacker within "
                  "the budget cannot clear."]
    calls = np.array([r["model_calls"] for r in rows])
    lines += ["", "## Cost", "",
              f"- model calls per example: median {np.median(calls):,.0f}, mean "
              f"{calls.mean():,.0f}, max {calls.max():,}; total {calls.sum():,} for {len(rows)} "
              "examples",
              f"- examples whose certification failed (left out above): {failed}",
              wall_line(rows), "",
              f"`{CALLS_FIGURE}`: model calls per example.", "",
              f"![model calls per example]({CALLS_FIGURE})", ""]
    plot_calls_histogram(run_dir / CALLS_FIGURE, rows)
    out = run_dir / REPORT
    out.write_text("\n".join(lines))
    return out


def _num(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.4f}"


def tradeoff_taus(tau: float) -> list[float]:
    """The thresholds of the trade-off table: a log grid from 1e-4 to 0.5, and the run's tau."""
    grid = [1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5]
    return sorted(set(grid) | {float(tau)})


def tradeoff_points(d_top: int, sigma: float) -> list[tuple[int, float]]:
    """(d, r) points of the trade-off: flagged (0, 0), and (1, 0) and (1, sigma) when shown."""
    return [(0, 0.0)] + ([(1, 0.0), (1, float(sigma))] if d_top >= 1 else [(0, float(sigma))])


def _tradeoff_section(run_dir: Path, rows, settings, d_top, sigma) -> list[str]:
    tau = float(settings.get("tau"))
    taus = tradeoff_taus(tau)
    points = tradeoff_points(d_top, sigma)
    curve = tau_tradeoff(rows, settings, taus, points)
    _plot_tradeoff(run_dir / TRADEOFF, curve, points, tau, settings, rows)
    lines = ["## Choosing tau: detection against false flags", "",
             "The same rows recomputed at other thresholds from their recorded counts (no model "
             "call). Each row of the table is a filter of its own; pick tau on held-out data, "
             "not on these examples. The run's tau is in bold.", ""]
    body = []
    for t, ff, det in zip(curve["tau"], curve["false_flags"], curve["detection"]):
        cells = [f"{t:g}", _pct(ff)] + [_pct(v) for v in det]
        body.append([f"**{c}**" for c in cells] if t == tau else cells)
    lines += _table(["tau", "false flags (safe)",
                     *(f"detection d = {d}, r = {r:.3g} (unsafe)" for d, r in points)], body)
    return [*lines, ""]


# ---------------------------------------------------------------------------- the figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_shares(path: Path, rows, settings, d_top: int) -> None:
    """One panel per pool: the share certified at (d, r) against r, from :func:`certified_share`."""
    plt = _pyplot()
    sigma = settings.get("sigma") or 1.0
    groups = pools(rows, settings)
    finite = [x for r in rows for x in r["radius"] if np.isfinite(x)]  # inf: p_lower = 1
    top = max(4 * sigma, max(finite, default=0.0) * 1.05)
    fine = np.linspace(0, top, 200)
    marks = [0.0, 0.25 * sigma, 0.5 * sigma, 1.0 * sigma, 1.5 * sigma, 2.0 * sigma, 3.0 * sigma]
    threshold = is_threshold(settings)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.4), dpi=120,
                             sharex=True, sharey=True, squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 0.85, d_top + 1))
    titles = {"unsafe": "certified detection: unsafe inputs",
              "safe": "false flags: safe inputs",
              "all": "certified accuracy"}
    for ax, (name, pool) in zip(axes[0], groups.items()):
        curve = certified_share(pool, settings, fine, d_top)
        dots = certified_share(pool, settings, marks, d_top)
        for d in range(d_top + 1):
            ax.plot(fine, curve[d], color=colours[d], lw=2, label=f"d = {d}")
            ax.plot(marks, dots[d], "o", color=colours[d], ms=4)
        if name == "all":
            clean = clean_accuracy(rows)
            if clean is not None:
                ax.axhline(clean, color="0.3", ls="--", lw=1.2,
                           label=f"clean accuracy {clean:.1%}")
        ax.set_title(f"{titles[name]} (n = {len(pool)})", fontsize=10)
        ax.set_xlabel("L2 radius r of the continuous perturbation")
        ax.set_xlim(0, top)
        ax.set_ylim(-0.02, 1.02)  # lines at 0 stay visible above the axis
        ax.grid(alpha=0.3)
    # One legend beside the panels, where it hides no line.
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, title="discrete budget", fontsize=8, title_fontsize=8,
               loc="center right")
    axes[0, 0].set_ylabel("share flagged, certified at (d, r)" if threshold
                          else "share correct, certified at (d, r)")
    fold = f"; d > {d_top} certifies nothing" if d_top < len(rows[0]["radius"]) - 1 else ""
    fig.suptitle(f"{settings.get('dataset', '')}: sigma = {settings.get('sigma')}, "
                 f"beta = {noise_words(settings)['beta']}"
                 + (f", tau = {settings.get('tau')}" if threshold else "") + fold, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.1 / fig.get_figwidth(), 1))
    fig.savefig(path)
    plt.close(fig)


def _plot_frontier(path: Path, rows, settings, d_top: int) -> None:
    """Left: every certified example's r*(d) and :func:`radius_summary`'s median; right:
    :func:`largest_budget_counts`."""
    plt = _pyplot()
    budgets = np.arange(d_top + 1)
    pool = main_pool(rows, settings)
    threshold = is_threshold(settings)
    drawn = [r for r in pool if is_counted(r, settings) and r["largest_budget"] >= 0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=120)
    rng = np.random.default_rng(0)  # a small horizontal jitter separates equal frontiers
    for row in drawn:
        top = min(int(row["largest_budget"]), d_top)
        xs = budgets[: top + 1] + rng.uniform(-0.06, 0.06)
        left.plot(xs, row["radius"][: top + 1], color="0.55", lw=0.6, alpha=0.5, marker="o",
                  ms=2.5)
    stats = radius_summary(pool, settings, d_top)
    median = np.array([s["median"] for s in stats])
    left.plot(budgets, median, color="C3", lw=2.5, marker="o", ms=6, label="median r*(d)")
    for s in stats:
        if s["certified"]:
            left.annotate(f"{s['median']:.3g} ({s['certified']})", (s["d"], s["median"]),
                          textcoords="offset points", xytext=(6, 6), fontsize=8, color="C3")
    who = "unsafe inputs flagged" if threshold else "examples correct"
    # The key is in the title: a legend inside the axes would hide some examples.
    left.set_title(f"grey: r*(d) of all {len(drawn)} {who} and certified\n"
                   "red: median r*(d) over those certified at d (their number)", fontsize=10)
    left.set_xlabel("discrete budget d (changed tokens or fields)")
    left.set_ylabel("certified radius r*(d)")
    left.set_xticks(budgets)
    left.set_xlim(-0.4, d_top + 0.6)
    highest = max([x for r in drawn for x in r["radius"][: d_top + 1] if np.isfinite(x)],
                  default=0.0)
    left.set_ylim(0, 1.12 * highest if highest > 0 else 1.0)
    left.grid(alpha=0.3)
    counts = largest_budget_counts(pool, settings, d_top)
    keys = list(counts)
    bars = right.bar(keys, [counts[k] for k in keys], color=["0.6"] + ["C0"] * (len(keys) - 1))
    right.bar_label(bars, fontsize=8)
    right.set_xticks(keys, ["none" if k < 0 else str(k) for k in keys])
    right.set_xlabel("largest certified budget d")
    right.set_ylabel("examples")
    right.set_title(f"largest certified budget of the {len(pool)} "
                    + ("unsafe inputs" if threshold else "examples"), fontsize=10)
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_tradeoff(path: Path, curve: dict, points, tau: float, settings, rows) -> None:
    """Left: both sides of the filter against tau; right: detection against false flags."""
    plt = _pyplot()
    groups = pools(rows, settings)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4), dpi=120)
    taus, ff = np.asarray(curve["tau"]), curve["false_flags"]
    at = curve["tau"].index(tau)
    left.plot(taus, ff, "s-", color="C3", ms=4, lw=2,
              label=f"false flags ({len(groups['safe'])} safe inputs)")
    for j, (d, r) in enumerate(points):
        det = curve["detection"][:, j]
        label = ("flagged, d = 0, r = 0" if (d, r) == (0, 0.0)
                 else f"certified at d = {d}, r = {r:.3g}")
        left.plot(taus, det, "o-", color=f"C{j}", ms=4, lw=1.5, label=label)
        right.plot(ff, det, "o-", color=f"C{j}", ms=4, lw=1.5, label=label)
    left.axvline(tau, color="k", ls=":", lw=1, label=f"this run's tau = {tau:g}")
    right.plot([ff[at]] * len(points), curve["detection"][at], "s", ms=9, mfc="none",
               color="k", label=f"this run's tau = {tau:g}")
    left.set_xscale("log")
    left.set_xlabel("threshold tau")
    left.set_ylabel(f"share of the unsafe ({len(groups['unsafe'])}) or safe inputs")
    left.set_title("both sides of the filter against tau", fontsize=10)
    right.set_xlabel(f"false flags: share of the {len(groups['safe'])} safe inputs flagged")
    right.set_ylabel(f"share of the {len(groups['unsafe'])} unsafe inputs")
    right.set_title("detection against false flags (one dot per tau)", fontsize=10)
    for ax in (left, right):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    right.set_xlim(-0.02, 1.02)
    left.legend(fontsize=8, loc="center left")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_calls_histogram(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Histogram of model calls per example (log-spaced bins): where a sequential run spent.

    When every example cost the same (fixed sampling) the figure is one labelled
    bar at that number, on a plain axis.
    """
    plt = _pyplot()
    calls = np.array([r["model_calls"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=120)
    low, high = max(calls.min(), 1.0), max(calls.max(), 2.0)
    if calls.min() == calls.max():  # one value: a bar with its number, not a histogram
        ax.bar([f"{calls[0]:,.0f}"], [calls.size], width=0.4, color="C2")
        ax.set_xlabel("model calls for the example (every example: the same)")
        title = f"model calls per example: {calls[0]:,.0f} for all {calls.size} examples"
    else:
        spread = high > low * 1.1
        ax.hist(calls, bins=np.geomspace(low / 1.05, high * 1.05, 30) if spread else 10,
                color="C2")
        if spread:
            ax.set_xscale("log")
        else:  # a narrow range: plain numbers, no "+1e4" offset
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.axvline(np.median(calls), color="C3", lw=2, label=f"median {np.median(calls):,.0f}")
        ax.set_xlabel("model calls for the example")
        ax.legend(fontsize=8)
        title = f"model calls per example (mean {calls.mean():,.0f}, {len(calls)} examples)"
    ax.set_ylabel("examples")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
