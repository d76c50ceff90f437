"""hybridcert: certified robustness under joint discrete and continuous perturbations.

Hybrid randomized smoothing (Delattre et al., ICML 2026): token substitution
noise on the discrete part of an input, Gaussian noise on the continuous part,
and a Neyman-Pearson certificate giving, for every discrete budget ``d``, the
largest L2 radius ``r*(d)`` within which the smoothed decision cannot change.
The mathematics is explained in ``docs/`` of the project.

Run your own data: :func:`certify_dataset` writes a resumable run directory
(``run.json``, ``results.jsonl``, ``report.md``) and :func:`load_run` reads it
back as a pandas DataFrame.
"""

__version__ = "0.1.0"

from . import datasets
from .certificate.atoms import (
    Atoms,
    PositionExperiment,
    absorbing_atoms,
    absorbing_experiment,
    categorical_atoms,
    field_choices,
    product_atoms,
    uniform_atoms,
    uniform_experiment,
)
from .certificate.discrete import discrete_bound, discrete_bound_upper
from .certificate.frontier import Frontier, categorical_frontier, certified_frontier
from .certificate.gaussian import gaussian_radius
from .certificate.hybrid import (
    certified_radius,
    multiclass_radius,
    worst_case_probability,
    worst_case_probability_upper,
)
from .decision import DecisionRule
from .noise import AppendInput
from .record import Certificate, Estimate, recompute
from .runner import certify_dataset, load_run
from .smoothing import SmoothedClassifier
from .stats import clopper_pearson_lower, clopper_pearson_upper

__all__ = [
    "AppendInput",
    "Atoms",
    "Certificate",
    "DecisionRule",
    "Estimate",
    "Frontier",
    "PositionExperiment",
    "SmoothedClassifier",
    "__version__",
    "absorbing_atoms",
    "absorbing_experiment",
    "categorical_atoms",
    "categorical_frontier",
    "certified_frontier",
    "certified_radius",
    "certify_dataset",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "datasets",
    "discrete_bound",
    "discrete_bound_upper",
    "field_choices",
    "gaussian_radius",
    "load_run",
    "multiclass_radius",
    "product_atoms",
    "recompute",
    "uniform_atoms",
    "uniform_experiment",
    "worst_case_probability",
    "worst_case_probability_upper",
]
