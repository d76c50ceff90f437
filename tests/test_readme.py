"""README.md stays true: its Python blocks run, and CI runs its test command."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import hybridcert as hc

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_examples_run(tmp_path, monkeypatch, capsys):
    """```python blocks run as they are; ```py blocks need a GPU or a model download."""
    monkeypatch.chdir(tmp_path)  # the recipes write files where a user would: here
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    # The scikit-learn recipe's command certifies the pickled model (fewer samples here).
    from hybridcert.cli import main

    command = next(c for c in re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
                   if "sklearn:penguins.pkl" in c)
    argv = [*shlex.split(command)[1:], "--n", "300", "--n0", "30", "--limit", "6",
            "--no-progress"]
    assert main(argv) == 0
    rows = hc.load_run(tmp_path / "runs" / "penguins")
    assert len(rows) == 6 and not rows["failed"].any() and rows["correct"].mean() > 0.5
    assert "largest_budget" in rows and (tmp_path / "runs" / "penguins" / "report.md").exists()


def test_the_datasets_module_is_reachable_after_import():
    import hybridcert

    assert hybridcert.datasets.load_mm_interaction().name == "mm-interaction"


def test_ci_runs_the_readme_test_command(tmp_path):
    """.ci/run reads README's test command (no copy to drift), runs it in a fresh venv with the
    newest pip, returns its exit code, and stops loudly when the command is not found."""
    ci = ROOT / ".ci" / "run"
    printed = subprocess.run([str(ci), "--print"], capture_output=True, text=True, check=True)
    command = printed.stdout.strip()
    assert f"```bash\n{command}\n```" in README
    assert command.startswith("python3 -m venv .venv && .venv/bin/python -m pip install "
                              "--upgrade pip && ") and command.endswith("-m pytest")
    assert '-e ".[test]"' in command and "fairness" not in command
    # The same script on a stand-in README: the command's exit code comes through.
    (tmp_path / ".ci").mkdir()
    shutil.copy(ci, tmp_path / ".ci" / "run")
    readme = tmp_path / "README.md"
    readme.write_text("Run the tests:\n\n```bash\ntrue && exit 3\n```\n")
    assert subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True).returncode == 3
    readme.write_text("Run the tests:\n\n```bash\ntrue && exit 0\n```\n")
    assert subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True).returncode == 0
    readme.write_text("No command here.\n")
    missing = subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True, text=True)
    assert missing.returncode != 0 and "exactly one ```bash block" in missing.stderr
