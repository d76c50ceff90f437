"""``hybridcert report RUN_DIR``: a markdown summary and matplotlib figures of a certification run.

Metric. Under the majority rule, *certified accuracy* at ``(d, r)`` is the
share of examples whose smoothed prediction is correct and certified against
at most ``d`` discrete changes and any continuous shift of norm ``<= r``.
Under the threshold (safety-filter) rule the certificate is "stays flagged".
The metric is then the *certified detection rate*: the share of truly
positive (target-label) examples flagged and certified at ``(d, r)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .runner import RESULTS, SETTINGS, read_results

REPORT = "report.md"


def load_run(run_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    """The settings and the result rows of a run directory (a torn last line is ignored)."""
    run_dir = Path(run_dir)
    if not (run_dir / SETTINGS).exists():
        raise ValueError(f"{run_dir} is not a run directory (no {SETTINGS}); run "
                         "`hybridcert certify --out DIR` first")
    settings = json.loads((run_dir / SETTINGS).read_text())
    rows = [r for r in read_results(run_dir / RESULTS).values() if not r.get("failed")]
    if not rows:
        raise ValueError(f"{run_dir / RESULTS} has no finished rows yet")
    return settings, rows


def failed_rows(run_dir: str | os.PathLike) -> list[dict]:
    """Rows of examples whose certification kept failing (with their error)."""
    return [r for r in read_results(Path(run_dir) / RESULTS).values() if r.get("failed")]


def evaluation_pool(rows: list[dict], settings: dict) -> list[dict]:
    """The examples a metric is computed over: all of them (majority), or the truly positive
    ones (threshold rule, whose certificate says "stays flagged")."""
    if settings.get("decision") == "threshold":
        return [r for r in rows if r["true_label"] == settings.get("target_label", 1)]
    return rows


def is_certified_hit(row: dict, settings: dict) -> bool:
    """A correct certified prediction: the right label, or a flag on a truly positive example."""
    if settings.get("decision") == "threshold":
        target = settings.get("target_label", 1)
        return row["true_label"] == target and row["predicted"] == target
    return bool(row["correct"])


def certified_table(rows: list[dict], settings: dict, radii) -> tuple[np.ndarray, str, int]:
    """Certified share at each ``(d, r)``: array ``(d_max + 1, len(radii))``, metric name, base."""
    pool = evaluation_pool(rows, settings)
    d_max = len(rows[0]["radius"]) - 1
    table = np.zeros((d_max + 1, len(radii)))
    for row in pool:
        if is_certified_hit(row, settings):
            for d in range(min(row["largest_budget"], d_max) + 1):
                table[d] += np.asarray(radii) <= row["radius"][d]
    name = ("certified detection rate" if settings.get("decision") == "threshold"
            else "certified accuracy")
    return table / max(len(pool), 1), name, len(pool)


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, ``certified_accuracy.png`` and ``frontier.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    settings, rows = load_run(run_dir)
    sigma = settings.get("sigma") or 1.0
    d_max = len(rows[0]["radius"]) - 1
    radii = [0.0, 0.25 * sigma, 0.5 * sigma, 1.0 * sigma, 1.5 * sigma, 2.0 * sigma, 3.0 * sigma]
    table, metric, base = certified_table(rows, settings, radii)
    fine = np.linspace(0, max(4 * sigma, max(max(r["radius"]) for r in rows) * 1.05), 200)
    curve, _, _ = certified_table(rows, settings, fine)
    _plot_curves(run_dir / "certified_accuracy.png", fine, curve, metric, settings)
    _plot_frontier(run_dir / "frontier.png", rows, settings)

    n_rows = len(rows)
    pool = evaluation_pool(rows, settings)
    abstain = sum(r["abstain"] for r in rows)
    calls = np.array([r["model_calls"] for r in rows])
    seconds = np.array([r["seconds"] for r in rows])
    lines = [
        f"# Certification report: `{settings.get('dataset', run_dir.name)}`", "",
        _settings_line(settings), "",
        f"{n_rows} examples certified; {metric} is computed over {base} examples"
        + (" (those whose true label is the target label)." if base != n_rows else "."), "",
        f"## {metric.capitalize()} at radius r (rows: discrete budget d)", "",
        "| d | " + " | ".join(f"r = {r:.3g}" for r in radii) + " |",
        "|---|" + "---|" * len(radii),
    ]
    for d in range(d_max + 1):
        lines.append(f"| {d} | " + " | ".join(f"{v:.1%}" for v in table[d]) + " |")
    if settings.get("decision") == "threshold":
        target = settings.get("target_label", 1)
        negatives = [r for r in rows if r["true_label"] != target]
        flagged = sum(r["predicted"] == target for r in negatives)
        lines += ["", f"The threshold rule flags an input when the lower bound on the target "
                  f"label's probability reaches tau = {settings.get('tau')}: a cautious filter. "
                  f"It also flagged {flagged} of the {len(negatives)} examples whose true label "
                  f"is not the target ({flagged / max(len(negatives), 1):.1%} false flags); "
                  "certificates on those are not counted above."]
    lines += ["", "## Mean certified radius per budget", "",
              "Over the examples above whose correct prediction is certified at that budget.", "",
              "| d | certified | mean radius | median radius |", "|---|---|---|---|"]
    for d in range(d_max + 1):
        got = [r["radius"][d] for r in pool
               if r["largest_budget"] >= d and is_certified_hit(r, settings)]
        mean = f"{np.mean(got):.4f}" if got else "-"
        median = f"{np.median(got):.4f}" if got else "-"
        lines.append(f"| {d} | {len(got)} | {mean} | {median} |")
    lines += ["", "## Largest certified budget", "",
              "Of the examples above; -1 means no correct certified prediction.", "",
              "| largest d | examples |", "|---|---|"]
    largest = np.array([r["largest_budget"] if is_certified_hit(r, settings) else -1
                        for r in pool])
    for d in range(-1, d_max + 1):
        lines.append(f"| {d} | {int(np.sum(largest == d))} |")
    lines += [
        "", "## Cost", "",
        f"- abstentions (no certified label): {abstain} of {n_rows}",
        f"- examples whose certification failed (left out above): {len(failed_rows(run_dir))}",
        f"- base-model abstentions and errors: {sum(r['abstentions'] for r in rows)} samples, "
        f"{sum(r['errors'] for r in rows)} from exceptions",
        f"- model calls per example: {calls.mean():.0f} (total {calls.sum()})",
        f"- seconds per example: {seconds.mean():.3f} (total {seconds.sum():.1f} s)",
        "", "## Figures", "",
        f"![{metric} versus radius](certified_accuracy.png)", "",
        "![certified frontier](frontier.png)", "",
    ]
    out = run_dir / REPORT
    out.write_text("\n".join(lines))
    return out


def _settings_line(s: dict) -> str:
    keys = ["dataset", "model", "kernel", "beta", "sigma", "decision", "tau", "alpha", "n0", "n",
            "d_max", "threat", "protocol", "seed"]
    return "Settings: " + ", ".join(f"{k} = {s[k]}" for k in keys if k in s and s[k] is not None)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(path: Path, radii, curve, metric: str, settings: dict) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    # Budgets beyond the first one that certifies nothing add only flat zero lines.
    empty = [d for d in range(len(curve)) if not curve[d].any()]
    shown = curve[: (empty[0] + 1 if empty else len(curve))]
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(shown)))
    for d, (values, colour) in enumerate(zip(shown, colours)):
        label = f"d = {d}" if d < len(shown) - 1 or not empty else f"d >= {d} (none)"
        ax.plot(radii, values, color=colour, lw=2, label=label)
    ax.set_xlabel("L2 radius r of the continuous perturbation")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, radii[-1])
    ax.grid(alpha=0.3)
    ax.legend(title="discrete budget", ncol=2 if len(shown) > 5 else 1, fontsize=8)
    ax.set_title(f"{metric} vs radius ({settings.get('dataset', '')}, "
                 f"sigma = {settings.get('sigma')}, beta = {settings.get('beta')})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_frontier(path: Path, rows: list[dict], settings: dict) -> None:
    plt = _pyplot()
    d_max = len(rows[0]["radius"]) - 1
    budgets = np.arange(d_max + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    pool = evaluation_pool(rows, settings)
    certified = [r for r in pool if r["largest_budget"] >= 0 and is_certified_hit(r, settings)]
    frontiers = np.array([[r["radius"][d] if d <= r["largest_budget"] else np.nan for d in budgets]
                          for r in certified]) if certified else np.full((1, d_max + 1), np.nan)
    for line in frontiers[:60]:
        left.plot(budgets, line, color="0.6", lw=0.6, alpha=0.6)
    with np.errstate(all="ignore"):
        median = np.nanmedian(np.where(np.isnan(frontiers), 0.0, frontiers), axis=0)
    left.plot(budgets, median, color="C3", lw=2.5, marker="o", label="median over examples")
    left.set_xlabel("discrete budget d (changed tokens or fields)")
    left.set_ylabel("certified radius r*(d)")
    left.set_title("certified (d, r) frontier per example")
    left.set_xticks(budgets)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    share = [np.mean([r["largest_budget"] >= d and is_certified_hit(r, settings)
                      for r in pool]) for d in budgets]
    right.bar(budgets, share, color="C0")
    right.set_xlabel("discrete budget d")
    right.set_ylabel("share certified at radius 0")
    right.set_ylim(0, 1)
    right.set_xticks(budgets)
    right.set_title("certified share per budget")
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
