"""The ``hybridcert`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__
from .certificate.atoms import absorbing_atoms, uniform_atoms
from .certificate.discrete import discrete_bound
from .certificate.frontier import categorical_frontier, certified_frontier

KERNELS = ("uniform", "absorbing", "categorical")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        parser.exit(2, f"hybridcert {args.command}: error: {err}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridcert",
        description="Certified robustness under joint discrete and continuous perturbations.",
    )
    parser.add_argument("--version", action="version", version=f"hybridcert {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_radius(commands)
    return parser


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
