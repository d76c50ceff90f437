"""The ``hybridcert`` command line: argparse, one call into the library, printing."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Sequence

from ._version import __version__
from .config import ConfigError, parse_batch_size, parse_target
from .registries import DATA_SOURCES, MODELS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hybridcert: %(message)s"))
    root = logging.getLogger("hybridcert")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        parser.exit(2, f"hybridcert {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"\nhybridcert {args.command}: interrupted; rerun the same command "
                         "to resume\n")
    finally:
        root.removeHandler(handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridcert",
        description="Certified robustness under joint discrete and continuous perturbations.")
    parser.add_argument("--version", action="version", version=f"hybridcert {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_certify(commands, common)
    _add_serve(commands, common)
    p = commands.add_parser("report", parents=[common], help="write report.md and figures for "
                            "a run directory (certified accuracy per radius and budget, cost)")
    p.add_argument("run_dir", help="a directory written by `hybridcert certify`")
    p.set_defaults(run=_run_report)
    _add_experiment(commands, common)
    _add_radius(commands, common)
    return parser


def _add_certify(commands, common) -> None:
    p = commands.add_parser(
        "certify", parents=[common],
        help="certify a data set with hybrid randomized smoothing, then write the report",
        description="Certify a data set's test split (default: the bundled mm-interaction task "
                    "and its cached demo model) into OUT/results.jsonl; rerun to resume.")
    _add_run_options(p)
    p.set_defaults(run=_run_certify)
    a = p.add_argument_group("output").add_argument
    a("--out", default=None, help="output directory (default: runs/DATASET)")
    a("--no-report", action="store_true", help="do not write the report")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--verbose", action="store_true", help="log what the run does (threads, training)")


def _add_run_options(p) -> None:
    """The options of a run, generated from the configuration's fields (certify and serve)."""
    from .config import (
        DataConfig,
        DecisionConfig,
        EstimationConfig,
        ExecutorConfig,
        ModelConfig,
        NoiseConfig,
    )

    add_config_arguments(p, DataConfig, ModelConfig, NoiseConfig, DecisionConfig,
                         EstimationConfig, ExecutorConfig, overrides=_registry_options())


def _add_serve(commands, common) -> None:
    p = commands.add_parser(
        "serve", parents=[common],
        help="serve the smoothed classifier over HTTP: each answer is a decision and its "
             "certificate (hybridcert[serve])",
        description="Serve POST /v1/classify, GET /v1/info and GET /health, configured like "
                    "certify (sequential sampling of each request's --target questions). An "
                    "API key, if any, is read from $HYBRIDCERT_API_KEY only.")
    _add_run_options(p)
    a = p.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    a("--port", type=int, default=8000, help="port (8000)")
    a("--queue-size", type=int, default=1024,
      help="requests admitted at once; more get 503 with Retry-After (1024)")
    a("--max-calls", type=int, default=None, help="most model calls per request (default n-max "
      "+ n0); at the limit open targets are undecided")
    a("--timeout", type=float, default=30.0, help="seconds per request (30); at the limit open "
      "targets are undecided")
    a("--audit-log", default=None, metavar="PATH", help="append-only JSON Lines audit log")
    a("--max-body", type=int, default=8 * 1024 * 1024, help="largest request body, bytes")
    a("--max-text", type=int, default=4096, help="longest text of a guard's request")
    a("--no-batching", action="store_true",
      help="one request's looks at a time (requests do not share model batches)")
    a("--replicas", type=int, default=2, help="--executor ray: Ray Serve replicas, one model "
      "each (2), with --cpus-per-worker and --gpus-per-worker each")
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    from .config import RunConfig
    from .run import plan
    from .serve import options_from_args, run_server

    options = options_from_args(args)   # checked before the model loads
    p = plan(RunConfig.from_args(args))
    print(f"hybridcert serve: http://{options.host}:{options.port} (model {args.model}, "
          f"targets {p.config.estimation.targets})", flush=True)
    if args.executor == "ray":
        from .serve_ray import deploy

        deploy(p, options, replicas=args.replicas, cpus_per_replica=args.cpus_per_worker,
               gpus_per_replica=args.gpus_per_worker, address=args.ray_address, blocking=True)
    else:
        run_server(p, options)
    return 0


def add_config_arguments(parser: argparse.ArgumentParser, *groups: type,
                         overrides: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """Add the options of configuration dataclasses to ``parser``, one argument group each.

    Every field is an option unless its metadata says ``"cli": False``: its
    destination is the field's name (so :meth:`~hybridcert.config.RunConfig.from_args`
    reads it back), its default the field's default, and its metadata gives
    ``flag`` (default ``--`` and the name with dashes), ``help``, ``choices``,
    ``type`` (default from the annotation: int, float, else a string),
    ``metavar`` and ``action``. A parsing function that raises
    :class:`~hybridcert.config.ConfigError` has its message shown as is.
    ``overrides`` (field name -> keyword arguments) adds what the registries
    know (the data set names, the model prefixes).

    Examples
    --------
    >>> from hybridcert.config import NoiseConfig
    >>> parser = add_config_arguments(argparse.ArgumentParser(), NoiseConfig)
    >>> parser.parse_args(["--sigma", "0.25"]).sigma, parser.parse_args([]).kernel
    (0.25, 'uniform')
    """
    overrides = overrides or {}
    for kind in groups:
        title = kind.__name__.removesuffix("Config").lower()
        doc = (kind.__doc__ or "").strip().splitlines()  # its first line, without markup
        doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc[0]).replace("``", "") if doc else None
        group = parser.add_argument_group(title, doc)
        for f in dataclasses.fields(kind):
            meta = dict(f.metadata)
            if not meta.pop("cli", True):
                continue
            flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
            options = {"dest": f.name, "default": f.default, **meta, **overrides.get(f.name, {})}
            if options.get("action") not in ("store_true", "store_false"):
                options["type"] = _option_type(options.get("type"), f.type)
            group.add_argument(flag, **options)
    return parser


def _option_type(parse, annotation) -> type | None:
    """The type of an option: the metadata's parser (ConfigError shown as is), else the
    annotation's int or float, else None (a string)."""
    if parse is not None:
        if parse in (int, float, str):
            return parse

        def convert(text):
            try:
                return parse(text)
            except ConfigError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        convert.__name__ = parse.__name__  # argparse names it in "invalid ... value"
        return convert
    if annotation in (int, float):
        return annotation
    first = str(annotation).split("|")[0].strip()  # "int | None", as a string or a union
    return {"int": int, "float": float}.get(first)


def _registry_options() -> dict[str, dict]:
    """``--dataset`` and ``--model`` from what the registries hold now; the parsers of the
    two options whose text is not a plain number (the spec, in spec.py, imports no config)."""
    return {
        "targets": {"type": parse_target},
        "batch_size": {"type": parse_batch_size},
        "dataset": {"choices": list(DATA_SOURCES),
                    "help": "; ".join(f"{k}: {s.help}" for k, s in DATA_SOURCES.items())},
        "model": {"metavar": "{" + ",".join(p + ("PATH" if p.endswith(":") else "")
                                            for p in MODELS) + "}",
                  "help": "; ".join(f"{k}{'PATH' if k.endswith(':') else ''}: {e.help}"
                                    for k, e in MODELS.items())},
    }


def _run_certify(args) -> int:
    from .config import RunConfig
    from .report import write_report
    from .run import certify_run
    from .runner import RESULTS, read_results

    config = RunConfig.from_args(args)
    out = certify_run(config, announce=lambda line: print(line, flush=True))
    rows = read_results(out / RESULTS)
    failed = [r for r in rows.values() if r.get("failed")]
    print(f"{len(rows)} rows in {out / RESULTS}: "
          f"{sum(r.get('model_calls', 0) for r in rows.values()):,} model calls, "
          f"{sum(r.get('seconds', 0.0) for r in rows.values()):.1f} s certifying")
    if config.executor.report and len(failed) < len(rows):  # a certified row to report
        print(f"report written to {write_report(out)}")
    if failed:
        print(f"hybridcert certify: {len(failed)} example(s) failed (rerun to retry them); "
              f"first error: {failed[0]['error']}", file=sys.stderr)
        return 1
    return 0


def _run_report(args) -> int:
    from .report import write_report

    print(f"report written to {write_report(args.run_dir)}")
    return 0


def _add_experiment(commands, common) -> None:
    p = commands.add_parser(
        "experiment", parents=[common],
        help="run the paper's comparisons (tables and figures): paper or adult",
        description="paper: hybrid versus image-only and text-only smoothing, beta and sigma "
                    "ablations, MMCert-style ablation and the joint attack on the mm-interaction "
                    "demo. adult: the paper's tabular experiment on UCI Adult (clean and "
                    "certified accuracy, timings, exact field choice vs brute force).")
    a = p.add_argument
    a("name", choices=("paper", "adult"), help="which experiment")
    a("--examples", type=int, default=None, help="examples certified (paper: 40 unsafe; adult: 30)")
    a("--n", type=int, default=None, help="samples per estimate (paper 2000, adult 10000)")
    a("--n0", type=int, default=None, help="selection samples (paper 50, adult 100)")
    a("--alpha", type=float, default=None, help="failure probability (paper 0.001, adult 0.01)")
    a("--attack-examples", type=int, default=8,
      help="paper: examples attacked by the joint attack (8)")
    a("--data-path", default=None,
      help="adult: your own Adult file or folder (default $HYBRIDCERT_ADULT, then the bundled copy)")
    a("--seed", type=int, default=0)
    a("--out", default=None, help="output directory (default runs/NAME)")
    a("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_experiment)


def _run_experiment(args) -> int:
    out = args.out or os.path.join("runs", args.name)
    given = {k: v for k, v in (("n_examples", args.examples), ("n", args.n), ("n0", args.n0),
                               ("alpha", args.alpha)) if v is not None}
    if args.name == "adult":
        from .experiments.adult import adult_experiment

        path = adult_experiment(out, data_path=args.data_path, seed=args.seed,
                                progress=not args.no_progress, **given)
    else:
        from .experiments.paper import paper_experiment

        path = paper_experiment(out, attack_examples=args.attack_examples, seed=args.seed,
                                **given)
    print(path.read_text())
    print(f"written to {path}")
    return 0


def _add_radius(commands, common) -> None:
    p = commands.add_parser(
        "radius", parents=[common],
        help="certified radius calculator: r*(d) for given lower bounds",
        description="Certified L2 radius r*(d) for every discrete budget d, from a lower "
                    "confidence bound p_lower on the smoothed probability of the certified "
                    "label. Every value is rounded towards the safe side.",
        epilog="example: hybridcert radius --p-lower 0.999 0.99 --sigma 0.5 --tau 4.6e-5 "
               "--kernel uniform --beta 0.25 --vocab-size 32000 --d-max 8")
    p.add_argument("--p-lower", type=float, nargs="+", required=True, metavar="P",
                   help="lower confidence bound(s) on p_A(x), in [0, 1]")
    p.add_argument("--sigma", type=float, required=True, help="Gaussian noise level, > 0")
    p.add_argument("--tau", type=float, default=0.5,
                   help="decision threshold in (0, 1): 0.5 for majority (default), "
                        "e.g. 4.6e-5 for the safety-filter rule")
    p.add_argument("--kernel", choices=("uniform", "absorbing", "categorical"),
                   default="uniform", help="discrete noise: uniform substitution (default), "
                   "absorbing mask, or categorical (tabular fields of --arities, worst case)")
    p.add_argument("--beta", type=float, default=0.25,
                   help="substitution/mask probability in (0, 1] (default 0.25)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="alphabet size V >= 2 (uniform kernel)")
    p.add_argument("--arities", type=int, nargs="+", default=None, metavar="V",
                   help="number of categories of every categorical field (categorical kernel)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--d-max", type=int, default=None,
                        help="report budgets 0..D (default 8; the number of fields for categorical)")
    budget.add_argument("--budgets", type=int, nargs="+", default=None, metavar="D",
                        help="report exactly these budgets")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_radius)


def _run_radius(args) -> int:
    from .calculator import format_radius_table, radius_table
    from .config import ConfigError

    # An option the chosen kernel does not read is refused, not silently dropped.
    if args.arities is not None and args.kernel != "categorical":
        raise ConfigError("--arities", f"no value with --kernel {args.kernel} (read by --kernel "
                          "categorical; the uniform kernel takes --vocab-size)", args.arities)
    if args.vocab_size is not None and args.kernel != "uniform":
        raise ConfigError("--vocab-size", f"no value with --kernel {args.kernel} (read by "
                          "--kernel uniform)", args.vocab_size)
    table = radius_table(args.p_lower, sigma=args.sigma, tau=args.tau, kernel=args.kernel,
                         beta=args.beta, vocab_size=args.vocab_size, arities=args.arities,
                         budgets=args.budgets, d_max=args.d_max)
    if args.json:
        table.pop("budgets")
        json.dump(table, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_radius_table(table))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
