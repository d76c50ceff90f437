"""The ``hybridcert radius`` calculator, run as a user would."""

import json
import subprocess
import sys

import pytest

import hybridcert as hc
from hybridcert.cli import main


def test_table_lists_every_budget_and_the_largest(capsys):
    assert main(["radius", "--p-lower", "0.999", "--sigma", "0.5", "--tau", "4.6e-5",
                 "--vocab-size", "32000", "--d-max", "3"]) == 0
    out = capsys.readouterr().out
    assert "largest certified budget: 3" in out
    expected = hc.certified_radius(0.999, sigma=0.5, tau=4.6e-5,
                                   atoms=hc.uniform_atoms(2, beta=0.25, vocab_size=32000))
    assert f"{expected:.8g}" in out


def test_json_matches_the_library(capsys):
    assert main(["radius", "--p-lower", "0.99", "0.999", "--sigma", "1", "--kernel", "absorbing",
                 "--beta", "0.9", "--budgets", "0", "2", "--tau", "0.01", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["kernel"] == "absorbing"
    front = hc.certified_frontier([0.99, 0.999], sigma=1.0, tau=0.01, d_max=2,
                                  atoms=lambda d: hc.absorbing_atoms(d, beta=0.9))
    for i, row in enumerate(doc["results"]):
        assert row["radius"]["2"] == front.radii[i, 2]
        assert row["largest_certified_budget"] == front.largest_budget[i]
        assert set(row["radius"]) == {"0", "2"}


def test_categorical_uses_the_worst_fields(capsys):
    assert main(["radius", "--p-lower", "0.999", "--sigma", "0.5", "--kernel", "categorical",
                 "--arities", "2", "12", "--beta", "0.9", "--tau", "1e-4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    front = hc.categorical_frontier(0.999, sigma=0.5, arities=[2, 12], beta=0.9, tau=1e-4)
    assert doc["results"][0]["radius"]["1"] == front.radii[1]


@pytest.mark.parametrize("argv,message", [
    (["--beta", "0", "--vocab-size", "5"], r"beta must lie in (0, 1]"),
    ([], "--vocab-size is required"),
    (["--kernel", "categorical"], "--arities is required"),
    (["--vocab-size", "5", "--tau", "1"], "tau must lie in the open interval (0, 1)"),
])
def test_errors_are_clear_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["radius", "--p-lower", "0.9", "--sigma", "1", *argv])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "hybridcert.cli", "radius", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--p-lower" in out and "--kernel" in out
