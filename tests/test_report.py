"""Report: tables recomputed independently from the rows, figures drawn from the same numbers as
the tables, the words of each decision rule, folded budgets, the tau trade-off against recompute."""

import re

import numpy as np
import pytest

import hybridcert as hc
from hybridcert import report
from hybridcert.certificate.atoms import field_choices
from hybridcert.cli import main
from hybridcert.rundir import read_run


def load_run(run):
    """The settings and the certified rows of a run directory."""
    settings, rows = read_run(run)
    return settings, [r for r in rows if not r["failed"]]


@pytest.fixture(scope="module")
def drawn():
    """Every figure saved while the fixture is active, by file name, with its axes' lines."""
    from matplotlib.figure import Figure

    figures = {}
    save = Figure.savefig
    mp = pytest.MonkeyPatch()

    def spy(fig, path, *args, **kwargs):
        figures[str(path).rsplit("/", 1)[-1]] = [
            [(line.get_label(), np.asarray(line.get_xdata(), float),
              np.asarray(line.get_ydata(), float)) for line in ax.get_lines()]
            for ax in fig.axes]
        return save(fig, path, *args, **kwargs)

    mp.setattr(Figure, "savefig", spy)
    yield figures
    mp.undo()


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory, drawn):
    out = tmp_path_factory.mktemp("runs") / "tabular"
    assert main(["certify", "--dataset", "tabular", "--n", "2000", "--n0", "50", "--limit", "25",
                 "--out", str(out), "--no-progress"]) == 0
    return out, {k: v for k, v in drawn.items()}


@pytest.fixture(scope="module")
def threshold_run(tmp_path_factory, drawn):
    out = tmp_path_factory.mktemp("runs") / "mm"
    assert main(["certify", "--n", "1000", "--limit", "40", "--out", str(out),
                 "--no-progress"]) == 0
    return out, {k: v for k, v in drawn.items()}


def section(text: str, heading: str) -> str:
    """The markdown between ``## heading`` and the next ``##``."""
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_cells(block: str) -> dict[str, list[str]]:
    """First column -> the other cells, for every body row of the markdown tables in ``block``."""
    out = {}
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_majority_report_words_numbers_and_files(tabular_run):
    run, _ = tabular_run
    settings, rows = load_run(run)
    assert settings["decision"] == "majority" and settings["kernel"]["kernel"] == "categorical"
    text = (run / "report.md").read_text()
    for png in report.FIGURES:
        blob = (run / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
        assert f"]({png})" in text
    assert not (run / report.TRADEOFF).exists()
    # Certified accuracy at d = 0, r = 0 and the clean accuracy, recomputed from the rows.
    hits = np.sum([r["correct"] and r["largest_budget"] >= 0 for r in rows])
    assert f"| 0 | {hits / len(rows):.1%} ({hits}) |" in text
    clean = np.mean([r["settings"]["counted_label"] == r["true_label"] for r in rows])
    assert clean >= hits / len(rows)  # every certified correct label is the counted one
    assert f"clean accuracy (the smoothed prediction, certified or not, is correct): {clean:.1%}" \
        in text
    abstain = sum(r["predicted"] == -1 for r in rows)
    assert f"abstain (no certified label): {abstain} of {len(rows)}" in text
    for word in ("flagged", "false flag", "detection"):
        assert word not in text
    # The cost spent: n0 selection samples + n, per example.
    assert "model calls per example: 2,050 = 50 selection samples + 1 estimate of n = 2,000" \
        in text
    assert all(r["model_calls"] == 2050 for r in rows)
    largest = [r["largest_budget"] if r["correct"] else -1 for r in rows]
    budgets = table_cells(section(text, "Largest certified budget"))
    top = max(r["largest_budget"] for r in rows)
    assert {int(d): int(v[0]) for d, v in budgets.items() if d != "largest d"} == \
        {d: largest.count(d) for d in range(-1, top + 1)}
    assert "The attacker may set each changed field to any of its categories." in text


def test_majority_figure_draws_the_tables(tabular_run):
    run, drawn = tabular_run
    _, rows = load_run(run)
    text = (run / "report.md").read_text()
    # certified_accuracy.png: the dots at the table's radii are the table's numbers.
    table = table_cells(section(text, "Certified accuracy"))
    (panel,) = drawn["certified_accuracy.png"]
    dots = [(x, y) for label, x, y in panel if label.startswith("_") and x.size == 7]
    assert len(dots) == len(table) - 1  # one per shown budget (the header row is in `table`)
    for d, (_, y) in enumerate(dots):
        assert [f"{v:.1%} ({round(v * len(rows))})" for v in y] == table[str(d)]
    clean = [y[0] for label, _, y in panel if label.startswith("clean accuracy")]
    assert clean and f"{clean[0]:.1%}" in section(text, "Summary")
    # frontier.png: the red median is the radius table's median over certified examples only.
    medians = table_cells(section(text, "Certified radius per budget"))
    left = drawn["frontier.png"][0]
    (median,) = [y for label, _, y in left if label.startswith("median")]
    for d, value in enumerate(median):
        got = [r["radius"][d] for r in rows if r["correct"] and r["largest_budget"] >= d]
        assert medians[str(d)][2] == f"{np.median(got):.4f}" == f"{value:.4f}"
    # Every certified example is drawn, a single-budget frontier as a visible marker.
    certified = [r for r in rows if r["correct"] and r["largest_budget"] >= 0]
    grey = [line for line in left if line[0].startswith("_")]
    assert len(grey) == len(certified)
    assert all(line[1].size == min(r["largest_budget"], len(median) - 1) + 1
               for line, r in zip(grey, certified))


def test_threshold_report_words_both_sides_and_cost(threshold_run):
    run, _ = threshold_run
    settings, rows = load_run(run)
    assert settings["decision"] == "threshold"
    text = (run / "report.md").read_text()
    unsafe = [r for r in rows if r["true_label"] == 1]
    safe = [r for r in rows if r["true_label"] == 0]
    flagged_safe = sum(r["predicted"] == 1 for r in safe)
    flagged_unsafe = sum(r["predicted"] == 1 for r in unsafe)
    assert f"unsafe inputs flagged: {flagged_unsafe} of {len(unsafe)}" in text
    assert (f"safe inputs flagged (false flags): {flagged_safe} of {len(safe)} "
            f"({flagged_safe / len(safe):.1%}); not flagged: {len(safe) - flagged_safe}") in text
    summary = section(text, "Summary").lower()
    assert "abstain" not in summary and "accuracy" not in summary
    # No selection samples under the threshold rule: neither in the header nor in the cost.
    assert "n0" not in text.splitlines()[2] and all(r["n0"] == 0 for r in rows)
    assert ("model calls per example: 1,000 = 1 estimate of n = 1,000 (the threshold rule's "
            "label is fixed, so no selection samples)") in text
    # Both sides, from the rows: certified detection on unsafe, false flags on safe.
    detection = table_cells(section(text, "Certified detection on unsafe inputs"))
    false_flags = table_cells(section(text, "False flags on safe inputs"))
    sigma = settings["sigma"]
    for d in (int(k) for k in detection if k.isdigit()):
        for j, r in enumerate([0.0, 0.25 * sigma, 0.5 * sigma, 1.0 * sigma]):
            for pool, table in ((unsafe, detection), (safe, false_flags)):
                hits = np.sum([x["predicted"] == 1 and x["largest_budget"] >= d
                               and x["radius"][d] >= r for x in pool])
                assert table[str(d)][j] == f"{hits / len(pool):.1%} ({hits})"
    kernel = rows[0]["settings"]["kernel"]
    assert f"Attacker alphabet `{kernel['attacker_alphabet']}`" in text
    if kernel["attacker_alphabet"] == "noise":
        assert "assumption about the tokenizer and the input channel" in text


def test_threshold_budgets_fold_at_the_largest_reached(threshold_run):
    run, drawn = threshold_run
    _, rows = load_run(run)
    text = (run / "report.md").read_text()
    top = max(r["largest_budget"] for r in rows)
    d_max = len(rows[0]["radius"]) - 1
    assert top < d_max  # the demo never certifies all 8 tokens
    assert f"Budgets d = {top + 1} to {d_max} are left out of every table and figure" in text
    for heading in ("Certified detection on unsafe inputs", "False flags on safe inputs",
                    "Certified radius per budget"):
        assert sorted(k for k in table_cells(section(text, heading)) if k.isdigit()) == \
            [str(d) for d in range(top + 1)]
    for panel in drawn["certified_accuracy.png"]:
        assert {label for label, _, _ in panel if not label.startswith("_")} == \
            {f"d = {d}" for d in range(top + 1)}


def test_tau_tradeoff_is_recompute_of_the_rows(threshold_run):
    run, drawn = threshold_run
    settings, rows = load_run(run)
    text = (run / "report.md").read_text()
    sigma, tau = settings["sigma"], settings["tau"]
    # The run's own tau reproduces every row exactly.
    for row in rows:
        again = hc.recompute(report.row_certificate(row, settings), tau=tau)
        assert again.label == row["predicted"] and list(again.radii) == row["radius"]
    # Other taus: independently, row by row with recompute; a lower tau flags more inputs.
    points = [(0, 0.0), (1, sigma)]
    taus = [0.01, tau, 0.3]
    curve = report.tau_tradeoff(rows, settings, taus, points)
    for i, t in enumerate(taus):
        certs = [(r["true_label"], hc.recompute(report.row_certificate(r, settings), tau=t))
                 for r in rows]
        safe = [c.label == 1 for y, c in certs if y == 0]
        unsafe = [c for y, c in certs if y == 1]
        assert curve["false_flags"][i] == np.mean(safe)
        for j, (d, r) in enumerate(points):
            assert curve["detection"][i, j] == np.mean(
                [c.label == 1 and c.largest_budget >= d and c.radii[d] >= r for c in unsafe])
    assert curve["false_flags"][0] >= curve["false_flags"][1] >= curve["false_flags"][2]
    assert curve["false_flags"][0] > curve["false_flags"][2]
    # The bold row of the report's trade-off table is the tables' own numbers at the run's tau.
    block = section(text, "Choosing tau: detection against false flags")
    bold = [c.strip("*") for c in table_cells(block)[f"**{tau:g}**"]]
    detection = table_cells(section(text, "Certified detection on unsafe inputs"))
    false_flags = table_cells(section(text, "False flags on safe inputs"))
    def share(cell):
        return cell.split(" (")[0]

    assert bold[0] == share(false_flags["0"][0]) and bold[1] == share(detection["0"][0])
    assert bold[-1] == share(detection["1"][3])  # d = 1, r = sigma
    # ... and the figure draws that table: its false-flag line is the table's column.
    left = drawn[report.TRADEOFF][0]
    (ff,) = [y for label, _, y in left if label.startswith("false flags")]
    column = [cells[0].strip("*") for key, cells in table_cells(block).items() if key != "tau"]
    assert [f"{v:.1%}" for v in ff] == column


@pytest.mark.parametrize("protocol", ["shared", "per_budget"])
def test_first_budgets_recompute_as_the_whole_certificate(tmp_path, protocol):
    """The trade-off recomputes budgets d <= 1 only: the same label, radii and largest budget
    there as the whole certificate, at other taus too, under both protocols."""
    out = tmp_path / protocol
    assert main(["certify", "--n", "300", "--limit", "12", "--protocol", protocol, "--out",
                 str(out), "--no-progress", "--no-report"]) == 0
    settings, rows = load_run(out)
    assert any(r["largest_budget"] >= 1 for r in rows)
    for row in rows:
        cert = report.row_certificate(row, settings)
        for tau in (0.01, settings["tau"], 0.3):
            whole = hc.recompute(cert, tau=tau)
            for top in (0, 1, 3):
                part = hc.recompute(report.first_budgets(cert, top), tau=tau)
                assert part.label == whole.label and part.radii == whole.radii[:top + 1]
                assert part.largest_budget == min(whole.largest_budget, top)


def test_report_cli_and_errors(tabular_run, tmp_path, capsys):
    run, _ = tabular_run
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").exists()
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path)])
    assert stop.value.code == 2
    assert "not a run directory" in capsys.readouterr().err


def test_rows_recompute_with_the_core(tabular_run):
    _, rows = load_run(tabular_run[0])
    row = next(r for r in rows if r["largest_budget"] >= 1)
    # Three species: the multiclass runner-up rule, alpha split over A and the two others.
    assert row["settings"]["multiclass_rule"] == "runner_up"
    n = row["n"][0]
    p_lower = hc.stats.clopper_pearson_lower(row["count"][0], n, 0.001 / 2)
    assert p_lower == row["p_lower"]
    p_upper = min(hc.stats.clopper_pearson_upper(row["runner_up_count"][0], n, 0.001 / 4),
                  1 - p_lower)
    arities = row["settings"]["attack"][0]["arities"]
    radii = [min(hc.multiclass_radius(p_lower, p_upper, sigma=0.5,
                                      atoms=hc.categorical_atoms(c, beta=0.25))
                 for c in field_choices(arities, d)) for d in range(4)]
    radii = np.minimum.accumulate(radii)
    top = row["largest_budget"]
    assert list(radii[: top + 1]) == row["radius"][: top + 1]


def test_old_rows_without_a_counted_label_still_report(tabular_run, tmp_path):
    import json
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tabular_run[0], run)
    lines = (run / "results.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    for row in rows:
        del row["settings"]["counted_label"]
    stripped = [json.dumps(row) for row in rows]
    (run / "results.jsonl").write_text("\n".join(stripped) + "\n")
    text = report.write_report(run).read_text()
    assert re.search(r"clean accuracy .*: not recorded in these rows", text)


@pytest.mark.parametrize("command", ["certify", "report", "radius"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "usage: hybridcert " + command in capsys.readouterr().out


def test_certify_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--dataset", "tabular", "--threat", "suffix", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "--threat: expected l0 for a table" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--dataset", "tabular", "--beta", "1.5", "--out", str(tmp_path / "b")])
    assert stop.value.code == 2 and "--beta: expected a number in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "b" / "run.json").exists()  # nothing written for a refused run
