"""hybridcert: certified robustness under joint discrete and continuous perturbations.

Hybrid randomized smoothing (Delattre et al., ICML 2026): token substitution
noise on the discrete part of an input, Gaussian noise on the continuous part,
and a Neyman-Pearson certificate giving, for every discrete budget ``d``, the
largest L2 radius ``r*(d)`` within which the smoothed decision cannot change.
The mathematics is explained in ``docs/`` of the project.

Run your own data: :func:`certify_dataset` writes a resumable run directory
(``run.json``, ``results.jsonl``, ``report.md``) and :func:`load_run` reads it
back as a pandas DataFrame.

``__all__`` lists what users touch. The maths layer's building blocks
(``uniform_atoms``, ``absorbing_atoms``, ``categorical_atoms``, ``Atoms``,
``discrete_bound``, ``worst_case_probability``, ...) are reachable from here as
well, for the radius functions' ``atoms`` argument, but live in
:mod:`hybridcert.certificate`; internals such as ``product_atoms`` and
``field_choices`` are imported from their modules
(``hybridcert.certificate.atoms``).
"""

from . import datasets
from ._version import __version__

# The maths layer's building blocks: reachable here, not in __all__ (``x as x``: re-exported).
from .certificate.atoms import Atoms as Atoms
from .certificate.atoms import absorbing_atoms as absorbing_atoms
from .certificate.atoms import categorical_atoms as categorical_atoms
from .certificate.atoms import uniform_atoms as uniform_atoms
from .certificate.discrete import discrete_bound as discrete_bound
from .certificate.discrete import discrete_bound_upper as discrete_bound_upper
from .certificate.frontier import Frontier, categorical_frontier, certified_frontier
from .certificate.gaussian import gaussian_radius
from .certificate.hybrid import certified_radius, multiclass_radius
from .certificate.hybrid import worst_case_probability as worst_case_probability
from .certificate.hybrid import worst_case_probability_upper as worst_case_probability_upper
from .decision import DecisionRule
from .noise import (
    AbsorbingMask,
    AppendInput,
    AppendOnly,
    CategoricalSubstitution,
    GaussianNoise,
    InPlaceSuffix,
    L0Anywhere,
    UniformSubstitution,
)
from .record import Certificate, Estimate, recompute
from .rundir import load_run
from .runner import certify_dataset
from .sampling import ABSTAIN, ModelError
from .smoothing import SmoothedClassifier
from .spec import EstimationSpec
from .stats import clopper_pearson_lower, clopper_pearson_upper

__all__ = [
    "ABSTAIN",
    "AbsorbingMask",
    "AppendInput",
    "AppendOnly",
    "CategoricalSubstitution",
    "Certificate",
    "DecisionRule",
    "Estimate",
    "EstimationSpec",
    "Frontier",
    "GaussianNoise",
    "InPlaceSuffix",
    "L0Anywhere",
    "ModelError",
    "SmoothedClassifier",
    "UniformSubstitution",
    "__version__",
    "categorical_frontier",
    "certified_frontier",
    "certified_radius",
    "certify_dataset",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "datasets",
    "gaussian_radius",
    "load_run",
    "multiclass_radius",
    "recompute",
]
