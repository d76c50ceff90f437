"""The run directory's rules (issue 24): rows validated on read, duplicates and the stale lock
cleaned, rule-aware columns, errors counted, one retry policy that stops on a systematic error;
and the package's shape (issue 20): no import cycles, the public names, ``py.typed``."""

import ast
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

import hybridcert as hc
from hybridcert import report, rundir
from hybridcert.cli import main
from hybridcert.noise import UniformSubstitution
from hybridcert.rundir import RetryPolicy, RunStopped, read_results
from hybridcert.runner import certify_dataset

SRC = Path(hc.__file__).parent
API = {"n0": 20, "n": 200, "progress": False, "report": False}


def bright(tokens, images):
    return (images.reshape(len(images), -1).mean(axis=1) > 0.5).astype(int)


def smoothed_for(model=bright, **kwargs):
    return hc.SmoothedClassifier(model, sigma=0.25,
                                 discrete_noise=UniformSubstitution(beta=0.5, vocab_size=50),
                                 **kwargs)


def examples(count=5, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    images = rng.random((count, 4, 4)).round().astype(np.float32)
    tokens = rng.integers(0, 50, (count, 6))
    return (tokens, images, bright(None, images)) if labels else (tokens, images)


def lines_of(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- the results file


def test_a_json_line_missing_fields_is_quarantined_and_redone(tmp_path, caplog):
    out = certify_dataset(smoothed_for(), examples(4), out=tmp_path / "run", **API)
    rows = lines_of(out)
    bogus = {"id": rows[1]["id"], "hello": 1}
    text = [json.dumps(r) for r in rows]
    text[1] = json.dumps(bogus)  # the real row of that example is gone, a stub in its place
    (out / "results.jsonl").write_text("\n".join(text) + "\n")
    with caplog.at_level(logging.WARNING, logger="hybridcert"):
        read = read_results(out / "results.jsonl")
    assert rows[1]["id"] not in read and len(read) == 3  # never taken as done
    assert "line 2 is corrupt (missing abstain" in caplog.text
    certify_dataset(smoothed_for(), examples(4), out=out, **API)  # resumes: redoes that example
    again = lines_of(out)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)
    redone = next(r for r in again if r["id"] == rows[1]["id"])
    assert redone["radius"] == rows[1]["radius"] and redone["count"] == rows[1]["count"]
    assert json.loads((out / "results.corrupt.jsonl").read_text()) == bogus
    report.write_report(out)  # and the report reads it (no KeyError)


def test_a_mistyped_row_is_not_a_row():
    good = {k: v for k, v in zip(rundir.REQUIRED, [
        "a", 1, 1, False, 0.5, [3], [4], 0, 0, [0.1], 0, 0, 4, {}, False])}
    assert rundir.row_problem(good) is None
    assert rundir.row_problem({**good, "largest_budget": "3"}) == "largest_budget is '3'"
    assert rundir.row_problem({**good, "n0": True}) == "n0 is True"
    assert rundir.row_problem([1]) == "not a JSON object"


def test_duplicated_rows_are_removed_on_repair_keeping_the_first(tmp_path):
    pd = pytest.importorskip("pandas")
    out = certify_dataset(smoothed_for(), examples(3), out=tmp_path / "run", **API)
    rows = lines_of(out)
    later = {**rows[0], "seconds": 123.0}  # a second copy of example 0, appended later
    with (out / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(rows[1]) + "\n" + json.dumps(later) + "\n")
    assert read_results(out / "results.jsonl")[rows[0]["id"]]["seconds"] == rows[0]["seconds"]
    certify_dataset(smoothed_for(), examples(3), out=out, **API)  # repairs under the lock
    frame = pd.read_json(out / "results.jsonl", lines=True)
    assert len(frame) == 3 and frame["id"].is_unique
    assert lines_of(out) == rows  # the first complete copies, in their order


def test_the_lock_names_no_pid_after_the_run(tmp_path):
    out = certify_dataset(smoothed_for(), examples(2), out=tmp_path / "run", **API)
    assert (out / ".lock").read_text() == ""
    with rundir.locked(out):
        assert (out / ".lock").read_text().startswith("pid ")
        with pytest.raises(rundir.RunLocked, match="pid "):  # a second holder is refused and
            with rundir.locked(out):                         # leaves the holder's pid in place
                pass
        assert (out / ".lock").read_text().startswith("pid ")
    assert (out / ".lock").read_text() == ""


# --------------------------------------------------------------------------- the columns


def test_correct_is_null_without_a_label(tmp_path):
    out = certify_dataset(smoothed_for(), examples(4, labels=False), out=tmp_path / "run", **API)
    rows = lines_of(out)
    assert all(r["true_label"] == -1 and r["correct"] is None for r in rows)
    assert "flagged" not in rows[0]  # the majority rule has no flag
    labelled = lines_of(certify_dataset(smoothed_for(), examples(4), out=tmp_path / "l", **API))
    assert [r["correct"] for r in labelled] == [r["predicted"] == r["true_label"]
                                                for r in labelled]


def test_the_threshold_rule_says_what_the_filter_did(tmp_path):
    smoothed = smoothed_for(decision="threshold", tau=0.3, target_label=1)
    labels = np.arange(8) % 2
    images = np.ones((8, 4, 4), dtype=np.float32) * labels[:, None, None]  # far from the edge
    tokens = np.zeros((8, 6), dtype=int)
    out = certify_dataset(smoothed, (tokens, images, labels), out=tmp_path / "run", **API)
    rows = lines_of(out)
    assert {r["true_label"] for r in rows} == {0, 1}  # both sides of the filter
    for r in rows:
        assert r["flagged"] == (r["predicted"] == 1)
        assert r["correct"] == (r["flagged"] == (r["true_label"] == 1))
        assert r["abstain"] is False  # a filter flags or not
    # This filter is right on every input (the model is the labelling rule): the columns say so,
    # where predicted == true_label would call every safe input wrong.
    assert all(r["correct"] for r in rows) and not all(r["predicted"] == r["true_label"]
                                                       for r in rows)


# --------------------------------------------------------------------------- errors and retries


def test_a_failed_row_counts_the_calls_that_raised(tmp_path):
    def broken(tokens, images):
        raise RuntimeError("weights not loaded")

    out = certify_dataset(smoothed_for(broken), examples(2), out=tmp_path / "run", **API)
    for r in lines_of(out):
        assert r["failed"] and r["model_calls"] > 0
        assert r["errors"] == r["model_calls"]  # every call raised, and the row says so
        assert "weights not loaded" in r["first_error"]


class CountedError(RuntimeError):
    """An engine error that carries its counts (as ``hybridcert.sampling.ModelError`` does)."""

    def __init__(self):
        super().__init__("out of memory")
        self.errors, self.calls, self.first_error = 7, 9, "CUDA out of memory"


def test_a_failed_row_records_the_counts_its_error_carries(tmp_path):
    smoothed = smoothed_for()

    def certify(*args, **kwargs):
        raise CountedError()

    smoothed.certify = certify
    out = certify_dataset(smoothed, examples(2), out=tmp_path / "run", max_retries=0, **API)
    for r in lines_of(out):
        assert (r["errors"], r["model_calls"], r["first_error"]) == (7, 9, "CUDA out of memory")
        assert r["error"] == "CountedError: out of memory"


def test_a_systematic_error_stops_the_run_after_the_first_examples(tmp_path):
    calls = []
    smoothed = smoothed_for()

    def certify(*args, **kwargs):
        calls.append(1)
        raise ValueError("X has 794 features, but ColumnTransformer is expecting 7")

    smoothed.certify = certify
    with pytest.raises(RunStopped, match="first 3 examples all failed with the same error: "
                                         "ValueError: X has 794 features"):
        certify_dataset(smoothed, examples(40), out=tmp_path / "run", **API)
    assert len(calls) == 3 * 3  # three examples, each tried max_retries + 1 = 3 times, not 40
    rows = lines_of(tmp_path / "run")
    assert len(rows) == 3 and all(r["failed"] for r in rows)
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released


def test_one_success_among_the_first_examples_lets_the_run_go_on(tmp_path):
    smoothed = smoothed_for()
    certify, seen = smoothed.certify, []

    def sometimes(*args, **kwargs):
        seen.append(1)
        if len(seen) > 1:  # the first example succeeds, every later one fails
            raise ValueError("bad input")
        return certify(*args, **kwargs)

    smoothed.certify = sometimes
    out = certify_dataset(smoothed, examples(6), out=tmp_path / "run", max_retries=0, **API)
    assert [r["failed"] for r in lines_of(out)] == [False] + [True] * 5


def test_the_retry_policy():
    policy = RetryPolicy(max_retries=1, stop_after=2).start(todo=5)
    assert policy.retry(0) and not policy.retry(1)
    failed = {"failed": True, "error": "E: x"}
    policy.finished(failed)
    with pytest.raises(RunStopped, match="first 2 examples all failed with the same error: E: x"):
        policy.finished(failed)
    policy.start(todo=2)  # nothing left after the failures: the run ends with its failed rows
    policy.finished(failed)
    policy.finished({"failed": True, "error": "F: y"})
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0, got -1"):
        RetryPolicy(max_retries=-1)


# --------------------------------------------------------------------------- the report


def test_a_partial_run_says_it_is_partial(tmp_path):
    out = certify_dataset(smoothed_for(), examples(6), out=tmp_path / "run", limit=2,
                          **{**API, "report": True})
    text = (out / "report.md").read_text()
    assert "**Partial run**: certified 2 of 6 test examples (--limit 2)" in text
    certify_dataset(smoothed_for(), examples(6), out=out, **{**API, "report": True})
    assert "Certified 6 of the 6 test examples" in (out / "report.md").read_text()
    assert json.loads((out / "run.json").read_text())["split_size"] == 6


def test_one_cost_for_every_example_is_one_labelled_bar(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to look at it
    report.plot_calls_histogram(tmp_path / "calls.png", [{"model_calls": 10_000}] * 5)
    ax = kept[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10,000"]
    assert ax.xaxis.get_offset_text().get_text() == ""
    assert [p.get_height() for p in ax.patches] == [5]
    report.plot_calls_histogram(tmp_path / "near.png",
                                [{"model_calls": c} for c in (10_000, 10_050, 10_100)])
    kept[1].canvas.draw()
    assert kept[1].axes[0].xaxis.get_offset_text().get_text() == ""  # no "+1e4"


# --------------------------------------------------------------------------- the experiments


@pytest.mark.parametrize("argv,option", [
    (["--examples", "0"], "--examples"),
    (["--examples", "-3"], "--examples"),
    (["--attack-examples", "0"], "--attack-examples"),
    (["--examples", "100000"], "--examples"),
    (["--alpha", "0"], "--alpha"),
])
def test_experiment_arguments_are_checked_before_any_work(argv, option, tmp_path, capsys):
    out = tmp_path / "paper"
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "paper", *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and option in err
    assert not out.exists()


# --------------------------------------------------------------------------- the package


def import_graph() -> dict[str, set[str]]:
    """Every import between hybridcert's modules, function-level ones included."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names
                        if f"{target}.{a.name}" in modules]
                found = subs + ([target] if len(subs) < len(node.names) else [])
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert "hybridcert.rundir" in graph and "hybridcert.experiments.paper" in graph
    assert cycles(graph) == []
    assert "hybridcert.runner" not in graph["hybridcert.report"]  # report reads the directory
    # Only the command line reaches into the experiments' wing.
    assert {m for m, deps in graph.items() if not m.startswith("hybridcert.experiments")
            and any(d.startswith("hybridcert.experiments") for d in deps)} == {"hybridcert.cli"}
    # The scan finds a cycle when there is one.
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_the_public_names():
    expected = {
        "SmoothedClassifier", "Certificate", "Estimate", "recompute", "UniformSubstitution",
        "AbsorbingMask", "CategoricalSubstitution", "L0Anywhere", "InPlaceSuffix", "AppendOnly",
        "GaussianNoise", "AppendInput", "DecisionRule", "certify_dataset", "load_run",
        "certified_radius", "certified_frontier", "categorical_frontier", "gaussian_radius",
        "multiclass_radius", "clopper_pearson_lower", "clopper_pearson_upper", "ABSTAIN",
        "EstimationSpec", "ModelError"}
    assert expected <= set(hc.__all__)
    assert not {"product_atoms", "field_choices"} & set(hc.__all__)
    assert all(hasattr(hc, name) for name in hc.__all__)
    from hybridcert.certificate.atoms import field_choices, product_atoms  # noqa: F401
    assert hc.load_run is rundir.load_run and hc.ABSTAIN == -1


def test_the_package_is_typed():
    assert (SRC / "py.typed").is_file()
    import inspect

    from hybridcert.certificate import atoms, discrete, frontier, gaussian, hybrid

    missing = []
    for module in (atoms, discrete, frontier, gaussian, hybrid):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("_") or fn.__module__ != module.__name__:
                continue
            sig = inspect.signature(fn)
            missing += [f"{module.__name__}.{name}({p})" for p, par in sig.parameters.items()
                        if par.annotation is inspect.Parameter.empty
                        and par.kind not in (par.VAR_POSITIONAL, par.VAR_KEYWORD)]
            if sig.return_annotation is inspect.Signature.empty:
                missing.append(f"{module.__name__}.{name} -> ?")
    assert missing == []


def test_the_cli_stops_on_a_systematic_model_error(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import pickle

    from sklearn.linear_model import LogisticRegression

    data = hc.datasets.load_penguins()
    # Fitted on 5 columns, while the table gives 7: every call raises, on every example.
    five = np.hstack([data.train.x_discrete[:, :1], data.train.x_continuous])
    path = tmp_path / "narrow.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression(max_iter=500).fit(five, data.train.y)))
    with pytest.raises(SystemExit) as exit_:
        main(["certify", "--dataset", "tabular", "--model", f"sklearn:{path}", "--n", "100",
              "--n0", "10", "--limit", "20", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "stopped: the first 3 examples all failed with the same error" in err
    assert "features" in err
    rows = hc.load_run(tmp_path / "run")
    assert len(rows) == 3 and rows["failed"].all()  # 3 examples tried, not 20
    assert (rows["errors"] == rows["model_calls"]).all()
