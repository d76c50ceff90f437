"""The ``hybridcert`` command line: argparse, one call into the library, printing."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from ._version import __version__
from .config import HF_TASKS, parse_batch_size
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


def _add_run_options(p) -> None:
    """The options of a run (data, model, noise, decision, estimation, executor): certify, serve."""
    a = p.add_argument
    a("--dataset", choices=list(DATA_SOURCES), default="mm-interaction",
      help="; ".join(f"{k}: {s.help}" for k, s in DATA_SOURCES.items()))
    a("--data-path", default=None, help="folder of an on-disk data set (or "
      "$HYBRIDCERT_HATEFUL_MEMES / $HYBRIDCERT_MMSAFETYBENCH), or the Adult file")
    a("--split", default=None, help="Hateful Memes' split (dev_seen), or the split of an "
      "hf-disk DatasetDict (required there)")
    a("--text-column", default=None, help="hf-disk: column of the user's text (text); "
      "mm-safetybench: question field such as 'Question' or 'Rephrased Question'")
    a("--image-column", default=None, help="hf-disk: column of the image, an Image() feature "
      "or a path (image); 'none' for a text-only set")
    a("--label-column", default=None, help="hf-disk: column of the label, 0/1, boolean or "
      "safe/unsafe names (label)")
    a("--filter-column", default=None, help="hf-disk: boolean column; only its true rows are "
      "certified (UnsafeBench: mm_unsafe)")
    a("--constant-label", type=int, choices=(0, 1), default=None,
      help="hf-disk: the label of every row (1 = unsafe), instead of a label column")
    a("--model", default="demo", metavar="{" + ",".join(
        p + ("PATH" if p.endswith(":") else "") for p in MODELS) + "}",
      help="; ".join(f"{k}{'PATH' if k.endswith(':') else ''}: {e.help}"
                     for k, e in MODELS.items()))
    a("--policy", default=None, help="policy text of an hf: guard")
    a("--hf-rule", choices=("logit_mass", "generate"), default="logit_mass",
      help="how an hf: chat guard decides: Safe/Unsafe next-token mass, or generation")
    a("--hf-task", choices=HF_TASKS, default="auto",
      help="kind of hf: guard (auto: from the model's config): a VLM, a causal LM answering "
           "safe/unsafe, or a sequence classifier; text guards take no image (sigma none)")
    a("--hf-flagged", default=None, metavar="LABELS",
      help="flagged labels of a text-classification guard, by name or index, comma-separated "
           "(e.g. INJECTION,JAILBREAK; default: every label but 0)")
    a("--device", default="cpu", help="device of an hf: guard (cpu, cuda, ...)")
    a("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
      help="precision of an hf: guard (auto: bfloat16 on CUDA, else float32)")
    a("--image-size", type=int, default=None, help="image size for an hf: guard (processor's)")
    a("--kernel", choices=("uniform", "absorbing"), default="uniform",
      help="discrete noise on text tokens (tables always use categorical substitution)")
    a("--beta", type=float, default=0.25, help="substitution probability (0.25)")
    a("--sigma", type=float, default=0.5, help="Gaussian noise level (0.5)")
    a("--decision", choices=("auto", "threshold", "majority"), default="auto",
      help="threshold: flag --target-label iff its probability >= --tau; majority: most "
           "probable label; auto: threshold for mm-interaction and hf:, else majority")
    a("--tau", type=float, default=0.05, help="threshold of the threshold rule (0.05; the "
      "paper's 4.6e-5 suits a near-deterministic guard)")
    a("--target-label", type=int, default=1,
      help="label certified by the threshold rule (default 1 = unsafe)")
    a("--n0", type=int, default=100, help="selection samples per example (100)")
    a("--n", type=int, default=10_000, help="estimation samples per example (10000)")
    a("--alpha", type=float, default=0.001, help="failure probability (0.001)")
    a("--d-max", type=int, default=None,
      help="largest discrete budget (default: min(8, attackable positions))")
    a("--threat", choices=("l0", "suffix", "append"), default="l0",
      help="which positions are noised and attackable (default l0: all)")
    a("--threat-size", type=int, default=4,
      help="suffix length or number of appended positions (default 4)")
    a("--filler", type=int, default=0, help="token id of appended fillers")
    a("--attacker-alphabet", choices=("any", "noise"), default="any",
      help="symbols the attacker may write: any (default, safe) or only the noise alphabet's "
           "(an assumption about the tokenizer and input channel, recorded in the results)")
    a("--denoiser", default=None, metavar="diffusers:PATH_OR_NAME",
      help="denoised smoothing for an hf: image guard: a diffusers UNet2DModel and its "
           "DDPMScheduler denoise each noisy image in one step at the noise level 2 sigma of "
           "its [-1, 1] scale (the noise itself stays sigma in the guard's pixels)")
    a("--baseline", choices=("none", "image-only", "text-only"), default="none",
      help="certify a baseline: image-only (Gaussian only) or text-only (token noise only)")
    a("--protocol", choices=("shared", "per_budget"), default="shared",
      help="shared-D (one estimate for all budgets) or the published loop over d")
    a("--batch-size", type=parse_batch_size, default=1000, help="samples per model call (1000); "
      "auto (hf:): the guard halves its forward batch on out-of-memory, and records it")
    a("--sampling", choices=("fixed", "sequential"), default=None,
      help="fixed (default): n samples per example; sequential: stop once every question is "
           "decided (the --target ones, else every (d, r) of the report's grid), with an "
           "anytime-valid bound (up to --n-max samples); --target implies sequential")
    a("--target", dest="targets", type=_target, action="append", default=None,
      metavar="D:R", help="ask one question: is the input certified against D changed tokens "
      "and an L2 radius R? (repeatable; sequential sampling stops as soon as each is certified "
      "or out of reach)")
    a("--n-max", type=int, default=100_000, help="most samples under --sampling sequential")
    a("--seed", type=int, default=0, help="seed of data, model and noise (0)")
    a("--threads", type=int, default=None, help="torch threads (default: the CPUs this "
      "process may use minus the load on them)")
    a("--executor", choices=("local", "ray"), default="local",
      help="run examples here, or on Ray actors, one model replica each (hybridcert[ray])")
    a("--ray-address", default=None, help="a Ray cluster ('auto', 'ray://host:10001')")
    a("--workers", type=int, default=2, help="Ray actors (model replicas), 2")
    a("--cpus-per-worker", type=float, default=1, help="CPUs per actor (1)")
    a("--gpus-per-worker", type=float, default=0, help="GPUs per actor (0)")
    a("--max-in-flight", type=int, default=None,
      help="examples submitted but unfinished, at most (default 2 x workers)")
    a("--max-retries", type=int, default=2, help="retries of an example whose certification "
      "raised, before a failed row (2); the next run retries failed rows")
    a("--limit", type=int, default=None, help="certify only the first N test examples")
    a("--out", default=None, help="output directory (default: runs/DATASET)")
    a("--cache-dir", default=None, help="where demo models are cached")
    a("--no-report", action="store_true", help="do not write the report")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--verbose", action="store_true", help="log what the run does (threads, training)")


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


def _target(text: str) -> tuple[int, float]:
    from .config import ConfigError, parse_target

    try:
        return parse_target(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_certify(args) -> int:
    from .config import RunConfig
    from .report import write_report
    from .run import certify_run
    from .runner import RESULTS, read_results

    config = RunConfig.from_args(args)
    out = certify_run(config, announce=lambda line: print(line, flush=True))
    rows = read_results(out / RESULTS)
    failed = [r for r in rows.values() if r.get("failed")]
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
