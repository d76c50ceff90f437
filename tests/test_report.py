"""Report: tables recomputed independently from the rows, figures written, CLI end to end."""

import numpy as np
import pytest

from hybridcert.cli import main
from hybridcert.report import load_run


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tabular"
    assert main(["certify", "--dataset", "tabular", "--n", "2000", "--n0", "50", "--limit", "25",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_report_files_and_numbers(tabular_run):
    settings, rows = load_run(tabular_run)
    assert settings["decision"] == "majority" and settings["kernel"] == "categorical"
    text = (tabular_run / "report.md").read_text()
    for png in ("certified_accuracy.png", "frontier.png"):
        blob = (tabular_run / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
        assert f"]({png})" in text
    # Certified accuracy at d = 0, r = 0 recomputed from the rows.
    hits = np.mean([r["correct"] and r["largest_budget"] >= 0 for r in rows])
    assert f"| 0 | {hits:.1%} |" in text
    assert f"model calls per example: {np.mean([r['model_calls'] for r in rows]):.0f}" in text
    largest = [r["largest_budget"] if r["correct"] else -1 for r in rows]
    for d in range(-1, 4):
        assert f"| {d} | {largest.count(d)} |" in text


def test_report_cli_and_errors(tabular_run, tmp_path, capsys):
    (tabular_run / "report.md").unlink()
    assert main(["report", str(tabular_run)]) == 0
    assert (tabular_run / "report.md").exists()
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path)])
    assert stop.value.code == 2
    assert "not a run directory" in capsys.readouterr().err


def test_rows_recompute_with_the_core(tabular_run):
    import hybridcert as hc

    _, rows = load_run(tabular_run)
    row = next(r for r in rows if r["largest_budget"] >= 1)
    p_lower = hc.stats.clopper_pearson_lower(row["count"][0], row["n"][0], 0.001)
    assert p_lower == row["p_lower"]
    arities = row["settings"]["attack"][0]["arities"]
    front = hc.categorical_frontier(p_lower, sigma=0.5, arities=arities, beta=0.25, d_max=3,
                                    tau=0.5)
    assert list(front.radii) == row["radius"]


@pytest.mark.parametrize("command", ["certify", "report", "radius"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "usage: hybridcert " + command in capsys.readouterr().out


def test_certify_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--dataset", "tabular", "--threat", "suffix", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "tables use --threat l0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["certify", "--dataset", "tabular", "--beta", "1.5", "--out", str(tmp_path / "b")])
    assert stop.value.code == 2 and "beta must lie in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "b" / "run.json").exists()  # nothing written for a refused run
