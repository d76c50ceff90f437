"""The ``hybridcert`` command line."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__
from .certificate.atoms import absorbing_atoms, uniform_atoms
from .certificate.discrete import discrete_bound
from .certificate.frontier import categorical_frontier, certified_frontier
from .datasets import DATASETS

ON_DISK = ("hateful-memes", "mm-safetybench")

KERNELS = ("uniform", "absorbing", "categorical")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        return args.run(args)
    except ValueError as err:
        parser.exit(2, f"hybridcert {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"\nhybridcert {args.command}: interrupted; rerun the same command "
                         "to resume\n")


def _log_to_stderr() -> None:
    """Show the library's progress messages (``logging.INFO`` of ``hybridcert``) on stderr."""
    log = logging.getLogger("hybridcert")
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridcert",
        description="Certified robustness under joint discrete and continuous perturbations.",
    )
    parser.add_argument("--version", action="version", version=f"hybridcert {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_certify(commands)
    _add_report(commands)
    _add_experiment(commands)
    _add_radius(commands)
    return parser


def _add_certify(commands) -> None:
    p = commands.add_parser(
        "certify",
        help="certify a data set with hybrid randomized smoothing, then write the report",
        description=(
            "Certify every example of a data set's test split against joint discrete and "
            "continuous perturbations. With no argument: the bundled mm-interaction task, its "
            "demo model (trained under noise on first use, then cached), the paper's defaults. "
            "Results go to OUT/results.jsonl row by row; rerunning with the same settings "
            "resumes where a run stopped."
        ),
    )
    p.add_argument("--dataset", choices=sorted(DATASETS) + list(ON_DISK), default="mm-interaction",
                   help="bundled data set (default: mm-interaction; adult reads the UCI Adult "
                        "file of `pip install --no-deps fairness==0.1.8`), or hateful-memes / "
                        "mm-safetybench read from --data-path (with --model hf:...)")
    p.add_argument("--data-path", default=None,
                   help="folder of an on-disk data set (or $HYBRIDCERT_HATEFUL_MEMES / "
                        "$HYBRIDCERT_MMSAFETYBENCH), or the Adult file (or $HYBRIDCERT_ADULT)")
    p.add_argument("--split", default="dev_seen", help="Hateful Memes split (dev_seen)")
    p.add_argument("--model", default="demo",
                   help="'demo' (the bundled model, trained under noise and cached), "
                        "'sklearn:PATH' (a pickled fitted scikit-learn classifier for a table), or "
                        "'hf:NAME_OR_PATH' (a Hugging Face image-text-to-text safety guard)")
    p.add_argument("--policy", default=None, help="policy text of an hf: guard")
    p.add_argument("--hf-rule", choices=("logit_mass", "generate"), default="logit_mass",
                   help="how an hf: guard decides: Safe/Unsafe next-token mass, or generation")
    p.add_argument("--device", default="cpu", help="device of an hf: guard (cpu, cuda, ...)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="precision of an hf: guard (auto: bfloat16 on CUDA, float32 otherwise; "
                        "float16 needs CUDA). The logit-mass rule's logits are float32")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize images of on-disk data sets to this size (default: the "
                        "processor's)")
    p.add_argument("--kernel", choices=("uniform", "absorbing"), default="uniform",
                   help="discrete noise on text tokens (tables always use categorical "
                        "substitution); default uniform")
    p.add_argument("--beta", type=float, default=0.25, help="substitution probability (0.25)")
    p.add_argument("--sigma", type=float, default=0.5, help="Gaussian noise level (0.5)")
    p.add_argument("--decision", choices=("auto", "threshold", "majority"), default="auto",
                   help="threshold: flag --target-label iff its probability >= --tau (the paper's "
                        "safety filter); majority: most probable label. auto: threshold for "
                        "mm-interaction, majority otherwise")
    p.add_argument("--tau", type=float, default=0.05,
                   help="threshold of the threshold rule (default 0.05; the paper's 4.6e-5 suits "
                        "a near-deterministic guard, while the demo model errs on a few percent "
                        "of noisy draws and would flag every input)")
    p.add_argument("--target-label", type=int, default=1,
                   help="label certified by the threshold rule (default 1 = unsafe)")
    p.add_argument("--n0", type=int, default=100, help="selection samples per example (100)")
    p.add_argument("--n", type=int, default=10_000, help="estimation samples per example (10000)")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability (0.001)")
    p.add_argument("--d-max", type=int, default=None,
                   help="largest discrete budget (default: min(8, attackable positions))")
    p.add_argument("--threat", choices=("l0", "suffix", "append"), default="l0",
                   help="which positions are noised and attackable (default l0: all)")
    p.add_argument("--threat-size", type=int, default=4,
                   help="suffix length or number of appended positions (default 4)")
    p.add_argument("--filler", type=int, default=0, help="token id of appended fillers")
    p.add_argument("--attacker-alphabet", choices=("any", "noise"), default="any",
                   help="symbols the attacker may write beside a restricted noise alphabet: any "
                        "(default, safe) or only those of the noise alphabet (an assumption "
                        "about the tokenizer and the input channel, recorded in the results)")
    p.add_argument("--baseline", choices=("none", "image-only", "text-only"), default="none",
                   help="certify a baseline on the same examples and call budget: image-only "
                        "(Gaussian only, tokens untouched) or text-only (token noise only); "
                        "MMCert-style ablation runs in `hybridcert experiment paper`")
    p.add_argument("--protocol", choices=("shared", "per_budget"), default="shared",
                   help="shared-D (one estimate for all budgets) or the published loop over d")
    p.add_argument("--batch-size", type=_batch_size, default=1000,
                   help="samples per model call (1000). 'auto' (hf: guards): noise is drawn "
                        f"{AUTO_BATCH} samples at a time and the guard halves its forward "
                        "batch after an out-of-memory error; the size it settles on is recorded")
    p.add_argument("--sampling", choices=("fixed", "sequential"), default="fixed",
                   help="fixed: n samples per example; sequential: stop as soon as every "
                        "(d, r) of the report's grid is certified or out of reach, with an "
                        "anytime-valid bound (up to --n-max samples)")
    p.add_argument("--n-max", type=int, default=100_000,
                   help="most samples per example under --sampling sequential (100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, model and noise (0)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="run examples here (local) or on Ray actors, one model replica each "
                        "(needs hybridcert[ray]); the results are the same")
    p.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster ('auto', 'ray://host:10001'); default: start a "
                        "local instance")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (model replicas), 2")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs per actor (1)")
    p.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per actor (0)")
    p.add_argument("--max-in-flight", type=int, default=None,
                   help="examples submitted but unfinished, at most (default 2 x workers)")
    p.add_argument("--limit", type=int, default=None,
                   help="certify only the first N test examples (default: all)")
    p.add_argument("--out", default=None, help="output directory (default: runs/DATASET)")
    p.add_argument("--cache-dir", default=None, help="where demo models are cached")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_certify)


AUTO_BATCH = 1024  # noise samples per engine batch under --batch-size auto


def _batch_size(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _add_experiment(commands) -> None:
    p = commands.add_parser(
        "experiment",
        help="run the paper's comparisons (tables and figures): paper or adult",
        description="paper: hybrid versus image-only and text-only smoothing, the beta "
                    "ablation, sigma 0.5 versus 1.0, MMCert-style ablation, and the joint attack "
                    "against the certificate, on the bundled mm-interaction demo (paper.md, "
                    "paper.json, PNG figures). adult: the paper's tabular experiment on the UCI "
                    "Adult data (beta 0.25, sigma 0.5, tau 0.5, alpha 0.01, n 10,000, d <= 3, "
                    "30 rows; an RBF SVM and logistic regression trained on 5 noisy copies): "
                    "clean and certified accuracy, timings, and the exact minimum over field "
                    "choices against the brute force over field subsets (adult.md, adult.json, "
                    "adult_results.jsonl, adult_certified_accuracy.png).",
    )
    p.add_argument("name", choices=("paper", "adult"), help="which experiment")
    p.add_argument("--examples", type=int, default=None,
                   help="examples certified (paper: 40 unsafe; adult: 30)")
    p.add_argument("--n", type=int, default=None, help="samples per estimate (paper 2000, "
                                                       "adult 10000)")
    p.add_argument("--n0", type=int, default=None, help="selection samples (paper 50, adult 100)")
    p.add_argument("--alpha", type=float, default=None,
                   help="failure probability (paper 0.001, adult 0.01)")
    p.add_argument("--attack-examples", type=int, default=8,
                   help="paper: examples attacked by the joint attack (8)")
    p.add_argument("--data-path", default=None,
                   help="adult: the Adult file (default $HYBRIDCERT_ADULT, then the fairness "
                        "package's copy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default runs/NAME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_experiment)


def _run_experiment(args) -> int:
    out = args.out or os.path.join("runs", args.name)
    given = {k: v for k, v in (("n_examples", args.examples), ("n", args.n), ("n0", args.n0),
                               ("alpha", args.alpha)) if v is not None}
    if args.name == "adult":
        from .experiment_adult import adult_experiment

        path = adult_experiment(out, data_path=args.data_path, seed=args.seed,
                                progress=not args.no_progress, **given)
    else:
        from .experiments import paper_experiment

        path = paper_experiment(out, attack_examples=args.attack_examples, seed=args.seed,
                                **given)
    print(path.read_text())
    print(f"written to {path}")
    return 0


def _add_report(commands) -> None:
    p = commands.add_parser(
        "report",
        help="write report.md and figures for a run directory",
        description="Summarise a certification run: certified accuracy at a grid of radii for "
                    "each budget, mean radius per budget, largest certified budgets, cost; and "
                    "PNG figures of certified accuracy vs radius and of the (d, r) frontier.",
    )
    p.add_argument("run_dir", help="a directory written by `hybridcert certify`")
    p.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir)
    print(f"report written to {path}")
    return 0


def _run_certify(args) -> int:
    return _certify_and_report(args, *_prepare(args))


def _prepare(args, quiet: bool = False):
    """The smoothed classifier, the split and the settings that ``args`` describe."""
    if args.model.startswith("hf:"):
        return _prepare_hf(args, quiet)
    from .datasets import load_dataset
    from .models import TorchClassifier
    from .noise import (
        AbsorbingMask,
        CategoricalSubstitution,
        InPlaceSuffix,
        L0Anywhere,
        UniformSubstitution,
    )
    from .smoothing import SmoothedClassifier

    if args.dataset in ON_DISK:
        raise ValueError(f"--dataset {args.dataset} needs a Hugging Face guard: --model hf:...")
    if args.threat == "append":
        raise ValueError("--threat append needs a model that reads a trusted part followed by an "
                         f"untrusted slot of --threat-size symbols; the {args.model} model reads "
                         "the data set's fixed-length inputs. Certify such a model from Python "
                         "with threat=AppendOnly(m, filler) and hybridcert.AppendInput(trusted)")
    if args.batch_size == "auto":
        raise ValueError("--batch-size auto applies to hf: guards; give an integer")
    if args.dataset == "adult":
        from .datasets import load_adult

        data = load_adult(args.data_path, seed=args.seed)
    else:
        data = load_dataset(args.dataset, seed=args.seed)
    tabular = data.arities is not None
    decision = args.decision
    if decision == "auto":
        decision = "threshold" if args.dataset == "mm-interaction" else "majority"
    if tabular:
        kernel = CategoricalSubstitution(beta=args.beta, arities=data.arities)
        kernel_name = "categorical"
    elif args.kernel == "uniform":
        kernel = UniformSubstitution(beta=args.beta, vocab_size=data.vocab_size,
                                     attacker_alphabet=args.attacker_alphabet)
        kernel_name = "uniform"
    else:
        kernel = AbsorbingMask(beta=args.beta, mask_id=data.vocab_size)
        kernel_name = "absorbing"
    threat = {"l0": L0Anywhere(), "suffix": InPlaceSuffix(args.threat_size)}[args.threat]
    if tabular and args.threat != "l0":
        raise ValueError("tables use --threat l0 (any field may be changed)")
    settings = {
        "dataset": args.dataset, "model": args.model, "kernel": kernel_name, "beta": args.beta,
        "sigma": args.sigma, "decision": decision,
        "tau": args.tau if decision == "threshold" else 0.5,
        "target_label": args.target_label if decision == "threshold" else None,
        "n0": args.n0, "n": args.n, "alpha": args.alpha, "d_max": args.d_max,
        "threat": args.threat, "threat_size": args.threat_size if args.threat != "l0" else None,
        "filler": args.filler if args.threat == "append" else None,
        "attacker_alphabet": args.attacker_alphabet if kernel_name == "uniform" else None,
        "protocol": args.protocol, "batch_size": args.batch_size, "seed": args.seed,
        **_sampling_settings(args),
        "num_classes": data.num_classes, "hybridcert": __version__, "limit": args.limit,
        "baseline": args.baseline,
    }
    if not quiet:
        _announce(settings)
    model = _load_model(args, data, tabular, quiet)
    smoothed = SmoothedClassifier(
        model, discrete_noise=None if args.baseline == "image-only" else kernel,
        sigma=None if args.baseline == "text-only" else args.sigma, threat=threat,
        decision=decision,
        num_classes=data.num_classes, target_label=args.target_label,
        tau=args.tau if decision == "threshold" else None, batch_size=args.batch_size,
        # sequential sampling certifies from one lower bound: lower(A) > 1/2 with > 2 classes
        multiclass_rule="half" if args.sampling == "sequential" else "runner_up",
    )
    split = data.test
    if isinstance(model, TorchClassifier):
        import dataclasses

        import torch

        # Tensors in, tensors out: the Gaussian noise is then drawn by torch (3x faster here).
        split = dataclasses.replace(split, x_continuous=torch.as_tensor(split.x_continuous))
    return smoothed, split, settings


def _certify_and_report(args, smoothed, split, settings) -> int:
    from .runner import certify_split

    out = args.out or os.path.join("runs", args.dataset)
    print(f"{min(args.limit or len(split), len(split))} test examples -> {out}/", flush=True)
    common = {"n0": args.n0, "n": args.n, "alpha": args.alpha, "d_max": args.d_max,
              "protocol": args.protocol, "seed": args.seed, "limit": args.limit,
              "progress": not args.no_progress, "sampling": args.sampling, "n_max": args.n_max}
    if args.executor == "ray":
        from .distributed import certify_split_ray

        print(f"executor: ray ({args.ray_address or 'a local instance'}), {args.workers} "
              f"workers x {args.cpus_per_worker} CPU, {args.gpus_per_worker} GPU", flush=True)
        certify_split_ray(functools.partial(_rebuild_smoothed, vars(args)), split, out,
                          settings, address=args.ray_address, workers=args.workers,
                          cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker,
                          max_in_flight=args.max_in_flight, **common)
    else:
        certify_split(smoothed, split, out, settings, **common)
        forward = getattr(smoothed.base_classifier, "forward_batch_size", None)
        if settings.get("batch_size") == "auto" and forward:
            print(f"forward batch size settled at {forward} (recorded in each row's "
                  "settings.base_classifier)")
    if not args.no_report:
        from .report import write_report

        print(f"report written to {write_report(out)}")
    return 0


def _sampling_settings(args) -> dict:
    """Run settings of the noise streams and the sampling rule (a resume must match them)."""
    from .streams import STREAM_VERSION

    return {"stream": STREAM_VERSION, "sampling": args.sampling,
            "n_max": args.n_max if args.sampling == "sequential" else None}


def _announce(settings: dict) -> None:
    print("hybridcert certify:", ", ".join(f"{k}={v}" for k, v in settings.items()
                                             if v is not None), flush=True)


def _rebuild_smoothed(arg_dict: dict):
    """In a Ray worker: the same smoothed classifier as the driver's (one model replica)."""
    return _prepare(argparse.Namespace(**arg_dict), quiet=True)[0]


def _prepare_hf(args, quiet: bool = False):
    """Certify a Hugging Face safety guard on text + image examples (threshold rule, unsafe)."""
    import numpy as np

    from .datasets import load_dataset
    from .datasets.base import Split
    from .datasets.safety import load_hateful_memes, load_image, load_mm_safetybench
    from .models.hf import DEFAULT_POLICY, HFSafetyGuard
    from .noise import UniformSubstitution
    from .smoothing import SmoothedClassifier

    if args.threat != "l0":
        raise ValueError("--model hf: certifies --threat l0 (any token of the user text); "
                         "other threat regions need the Python API")
    name = args.model.split(":", 1)[1]
    auto = args.batch_size == "auto"
    guard = HFSafetyGuard.from_pretrained(name, policy=args.policy or DEFAULT_POLICY,
                                          rule=args.hf_rule, device=args.device, dtype=args.dtype,
                                          max_batch_size="auto" if auto else None)
    # The one resize, on load: the pixel space of the noise and of the L2 radius.
    size = args.image_size or guard._processor_image_size()
    if args.dataset == "hateful-memes":
        raw = [(e.id, e.text, load_image(e.image_path, size), e.label)
               for e in load_hateful_memes(args.data_path, args.split)]
    elif args.dataset == "mm-safetybench":
        raw = [(e.id, e.text, load_image(e.image_path, size), e.label)
               for e in load_mm_safetybench(args.data_path)]
    elif args.dataset == "mm-interaction":
        from PIL import Image

        data = load_dataset("mm-interaction", seed=args.seed).test
        vocab = load_dataset("mm-interaction", seed=args.seed).vocab

        def rgb(image):
            pil = Image.fromarray((image * 255).astype(np.uint8)).convert("RGB")
            return np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32) / 255.0

        raw = [(i, " ".join(vocab[t] for t in toks), rgb(img), int(y))
               for i, toks, img, y in zip(data.ids, data.x_discrete, data.x_continuous, data.y)]
    else:
        raise ValueError("--model hf: works with mm-interaction, hateful-memes, mm-safetybench")
    split = Split(ids=[r[0] for r in raw], x_discrete=[guard.encode_text(r[1]) for r in raw],
                  x_continuous=[r[2] for r in raw], y=np.array([r[3] for r in raw]))
    kernel = UniformSubstitution(beta=args.beta, alphabet=guard.alphabet,
                                 attacker_alphabet=args.attacker_alphabet)
    settings = {
        "dataset": args.dataset, "model": args.model, "guard": guard.describe(),
        "dtype": guard.describe()["dtype"], "kernel": "uniform",
        "attacker_alphabet": args.attacker_alphabet, "beta": args.beta,
        "sigma": args.sigma, "decision": "threshold",
        "tau": args.tau, "target_label": 1, "n0": args.n0, "n": args.n, "alpha": args.alpha,
        "d_max": args.d_max, "threat": "l0", "protocol": args.protocol, "image_size": size,
        "batch_size": args.batch_size, "seed": args.seed, "num_classes": 2,
        "hybridcert": __version__, "limit": args.limit, **_sampling_settings(args),
    }
    if not quiet:
        _announce(settings)
    smoothed = SmoothedClassifier(guard, discrete_noise=kernel, sigma=args.sigma,
                                  decision="threshold", target_label=1, tau=args.tau,
                                  clamp=(0.0, 1.0),
                                  batch_size=AUTO_BATCH if auto else args.batch_size)
    return smoothed, split, settings


def _load_model(args, data, tabular, quiet=False):
    if args.model == "demo":
        from .models import demo

        if tabular:
            return demo.tabular_model(data, sigma=args.sigma, beta=args.beta,
                                      random_state=args.seed, cache=args.cache_dir)
        return demo.mm_interaction_model(data, sigma=args.sigma, beta=args.beta,
                                         random_state=args.seed, cache=args.cache_dir,
                                         verbose=not quiet, kernel=args.kernel)
    if args.model.startswith("sklearn:"):
        import pickle

        from .models import SklearnClassifier

        with open(args.model.split(":", 1)[1], "rb") as fh:
            estimator = pickle.load(fh)
        return SklearnClassifier.for_table(estimator, data) if tabular else \
            SklearnClassifier(estimator)
    raise ValueError(f"--model must be 'demo' or 'sklearn:PATH', got {args.model!r}")


def _add_radius(commands) -> None:
    p = commands.add_parser(
        "radius",
        help="certified radius calculator: r*(d) for given lower bounds",
        description=(
            "Certified L2 radius r*(d) for every discrete budget d, from a lower confidence "
            "bound p_lower on the smoothed probability of the certified label. Every value is "
            "rounded towards the safe side (never above the exact radius)."
        ),
        epilog="example: hybridcert radius --p-lower 0.999 0.99 --sigma 0.5 --tau 4.6e-5 "
               "--kernel uniform --beta 0.25 --vocab-size 32000 --d-max 8",
    )
    p.add_argument("--p-lower", type=float, nargs="+", required=True, metavar="P",
                   help="lower confidence bound(s) on p_A(x), in [0, 1]")
    p.add_argument("--sigma", type=float, required=True, help="Gaussian noise level, > 0")
    p.add_argument("--tau", type=float, default=0.5,
                   help="decision threshold in (0, 1): 0.5 for majority (default), "
                        "e.g. 4.6e-5 for the safety-filter rule")
    p.add_argument("--kernel", choices=KERNELS, default="uniform",
                   help="discrete noise: uniform substitution (default), absorbing mask, or "
                        "categorical (tabular fields of --arities, worst case over which change)")
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
    budgets = _budgets(args)
    d_top = max(budgets)
    if args.kernel == "categorical":
        if not args.arities:
            raise ValueError("--arities is required with --kernel categorical")
        front = categorical_frontier(args.p_lower, sigma=args.sigma, arities=args.arities,
                                     beta=args.beta, d_max=d_top, tau=args.tau)
        disc = None
    else:
        if args.kernel == "uniform":
            if args.vocab_size is None:
                raise ValueError("--vocab-size is required with --kernel uniform")
            table = [uniform_atoms(d, beta=args.beta, vocab_size=args.vocab_size)
                     for d in range(d_top + 1)]
        else:
            table = [absorbing_atoms(d, beta=args.beta) for d in range(d_top + 1)]
        front = certified_frontier(args.p_lower, sigma=args.sigma, atoms=table, tau=args.tau)
        disc = np.array([discrete_bound(args.p_lower, a) for a in table]).T
    radii = np.atleast_2d(front.radii)
    largest = np.atleast_1d(front.largest_budget)
    settings = {"kernel": args.kernel, "beta": args.beta, "sigma": args.sigma, "tau": args.tau}
    if args.kernel == "uniform":
        settings["vocab_size"] = args.vocab_size
    if args.kernel == "categorical":
        settings["arities"] = args.arities
    results = []
    for i, p in enumerate(args.p_lower):
        row = {"p_lower": p, "largest_certified_budget": int(largest[i]),
               "radius": {str(d): float(radii[i, d]) for d in budgets}}
        if disc is not None:
            row["discrete_bound"] = {str(d): float(disc[i, d]) for d in budgets}
        results.append(row)
    if args.json:
        json.dump({"settings": settings, "results": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _print_table(settings, results, budgets)
    return 0


def _budgets(args) -> list[int]:
    if args.budgets is not None:
        budgets = sorted(set(args.budgets))
    else:
        default = len(args.arities) if args.kernel == "categorical" and args.arities else 8
        d_max = default if args.d_max is None else args.d_max
        budgets = list(range(d_max + 1))
    if budgets[0] < 0:
        raise ValueError("budgets must be >= 0")
    return budgets


def _print_table(settings: dict, results: list[dict], budgets: list[int]) -> None:
    described = ", ".join(f"{k}={v}" for k, v in settings.items())
    print(f"certified radius r*(d) ({described})")
    print("radii are L2 norms in the units of the continuous input; 0 = budget not certified\n")
    has_disc = "discrete_bound" in results[0]
    header = f"{'p_lower':>22}  {'d':>3}  {'radius r*(d)':>14}"
    header += f"  {'discrete bound':>15}" if has_disc else ""
    print(header)
    print("-" * len(header))
    for row in results:
        for d in budgets:
            line = f"{row['p_lower']!s:>22}  {d:>3}  {row['radius'][str(d)]:>14.8g}"
            if has_disc:
                line += f"  {row['discrete_bound'][str(d)]:>15.8g}"
            print(line)
        print(f"{'':>22}  largest certified budget: {row['largest_certified_budget']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
