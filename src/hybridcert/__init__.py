"""hybridcert: certified robustness under joint discrete and continuous perturbations.

Hybrid randomized smoothing (Delattre et al., ICML 2026): token substitution
noise on the discrete part of an input, Gaussian noise on the continuous part,
and a Neyman-Pearson certificate giving, for every discrete budget ``d``, the
largest L2 radius ``r*(d)`` within which the smoothed decision cannot change.
The mathematics is specified in ``docs/theory.md`` of the project.
"""

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
from .noise import AppendInput
from .smoothing import Certificate, Estimate, SmoothedClassifier, recompute
from .stats import clopper_pearson_lower, clopper_pearson_upper

__version__ = "0.1.0"

__all__ = [
    "AppendInput",
    "Atoms",
    "Certificate",
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
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "discrete_bound",
    "discrete_bound_upper",
    "field_choices",
    "gaussian_radius",
    "multiclass_radius",
    "product_atoms",
    "recompute",
    "uniform_atoms",
    "uniform_experiment",
    "worst_case_probability",
    "worst_case_probability_upper",
]
