"""The radius calculator behind ``hybridcert radius``: r*(d) for given lower bounds, as data."""

from __future__ import annotations

import numpy as np

from .certificate.atoms import absorbing_atoms, uniform_atoms
from .certificate.discrete import discrete_bound
from .certificate.frontier import categorical_frontier, certified_frontier

KERNELS = ("uniform", "absorbing", "categorical")


def radius_table(p_lower, *, sigma: float, tau: float = 0.5, kernel: str = "uniform",
                 beta: float = 0.25, vocab_size: int | None = None, arities=None,
                 budgets=None, d_max: int | None = None) -> dict:
    """Certified radius r*(d) at every budget for each lower bound; ``{"settings", "results"}``.

    Budgets: ``budgets`` exactly, else ``0..d_max`` (default 8, or the number of
    fields for the categorical kernel). Every value is rounded towards the safe side.

    Examples
    --------
    >>> table = radius_table([0.999], sigma=0.5, vocab_size=32000, d_max=2, tau=4.6e-5)
    >>> table["results"][0]["largest_certified_budget"], sorted(table["results"][0]["radius"])
    (2, ['0', '1', '2'])
    """
    if kernel not in KERNELS:
        raise ValueError(f"--kernel must be one of {KERNELS}, got {kernel!r}")
    p_lower = list(np.atleast_1d(p_lower))
    if budgets is not None:
        budgets = sorted(set(budgets))
    else:
        default = len(arities) if kernel == "categorical" and arities else 8
        budgets = list(range((default if d_max is None else d_max) + 1))
    if budgets[0] < 0:
        raise ValueError("budgets must be >= 0")
    d_top = max(budgets)
    if kernel == "categorical":
        if not arities:
            raise ValueError("--arities is required with --kernel categorical")
        front = categorical_frontier(p_lower, sigma=sigma, arities=arities, beta=beta,
                                     d_max=d_top, tau=tau)
        disc = None
    else:
        if kernel == "uniform":
            if vocab_size is None:
                raise ValueError("--vocab-size is required with --kernel uniform")
            table = [uniform_atoms(d, beta=beta, vocab_size=vocab_size) for d in range(d_top + 1)]
        else:
            table = [absorbing_atoms(d, beta=beta) for d in range(d_top + 1)]
        front = certified_frontier(p_lower, sigma=sigma, atoms=table, tau=tau)
        disc = np.array([discrete_bound(p_lower, a) for a in table]).T
    radii = np.atleast_2d(front.radii)
    largest = np.atleast_1d(front.largest_budget)
    settings = {"kernel": kernel, "beta": beta, "sigma": sigma, "tau": tau}
    if kernel == "uniform":
        settings["vocab_size"] = vocab_size
    if kernel == "categorical":
        settings["arities"] = list(arities)
    results = []
    for i, p in enumerate(p_lower):
        row = {"p_lower": float(p), "largest_certified_budget": int(largest[i]),
               "radius": {str(d): float(radii[i, d]) for d in budgets}}
        if disc is not None:
            row["discrete_bound"] = {str(d): float(disc[i, d]) for d in budgets}
        results.append(row)
    return {"settings": settings, "results": results, "budgets": budgets}


def format_radius_table(table: dict) -> str:
    """The text table ``hybridcert radius`` prints for a :func:`radius_table` result."""
    described = ", ".join(f"{k}={v}" for k, v in table["settings"].items())
    lines = [f"certified radius r*(d) ({described})",
             "radii are L2 norms in the units of the continuous input; 0 = budget not certified",
             ""]
    has_disc = "discrete_bound" in table["results"][0]
    header = f"{'p_lower':>22}  {'d':>3}  {'radius r*(d)':>14}"
    header += f"  {'discrete bound':>15}" if has_disc else ""
    lines += [header, "-" * len(header)]
    for row in table["results"]:
        for d in table["budgets"]:
            line = f"{row['p_lower']!s:>22}  {d:>3}  {row['radius'][str(d)]:>14.8g}"
            if has_disc:
                line += f"  {row['discrete_bound'][str(d)]:>15.8g}"
            lines.append(line)
        lines.append(f"{'':>22}  largest certified budget: {row['largest_certified_budget']}")
    return "\n".join(lines)
