"""The estimation specification: how many samples, at what level, how they are drawn.

:class:`EstimationSpec` is built once (by the command line's
:class:`~hybridcert.config.RunConfig`, by :func:`~hybridcert.runner.certify_dataset`,
or by :meth:`~hybridcert.smoothing.SmoothedClassifier.certify` from its
keywords) and travels whole to every certificate: through the local and Ray
executors, the look scheduler and the engine. It is checked once, on
construction, from the declarative :attr:`EstimationSpec._parameter_constraints`
and the cross-field rules of :meth:`EstimationSpec._check`; a bad value raises
:class:`~hybridcert._validation.ParameterError` (a ``ValueError``) naming the
argument and its valid range. Its defaults are written here only.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ._validation import Interval, Options, ParameterError, validate_params

__all__ = ["AUTO_BATCH", "PROTOCOLS", "SAMPLINGS", "EstimationSpec"]

PROTOCOLS = ("shared", "per_budget")
SAMPLINGS = ("fixed", "sequential")
AUTO_BATCH = 1024   # noise samples per engine batch under batch_size="auto" (hf: guards)
SEQUENTIAL_N_MAX = 100_000   # the most estimation samples of sequential sampling, by default


@dataclass(frozen=True)
class EstimationSpec:
    """The statistics of every example of a run, checked on construction.

    Parameters
    ----------
    n0 : int >= 1
        Selection samples (unused by the threshold rule, whose label is fixed).
    n : int >= 1
        Estimation samples of fixed sampling.
    alpha : float in (0, 1)
        Joint failure probability of every claim of a certificate.
    d_max : int >= 0, optional
        Largest discrete budget (default ``min(8, attackable positions)``).
    protocol : {"shared", "per_budget"}
        One estimate for every budget, or the published loop over budgets
        (a fixed-n cost baseline).
    seed : int >= 0
        Example ``i`` of a run draws its noise from ``SeedSequence([seed, i])``.
    sampling : {"fixed", "sequential"}, optional
        Default: ``"sequential"`` when ``targets`` are given, else ``"fixed"``
        (:attr:`resolved_sampling`).
    n_max : int >= 1, optional
        Sequential sampling only: the most estimation samples (default
        100,000); given with fixed sampling it is an error, not ignored.
    targets : None, "frontier", radii or (d, r) pairs, optional
        Sequential sampling only: the questions that stop it (see
        :meth:`~hybridcert.smoothing.SmoothedClassifier.certify`); pairs'
        budgets at most ``d_max``.
    batch_size : int >= 1, "auto" or None
        Noisy samples per model call; ``"auto"``: :data:`AUTO_BATCH` samples
        per engine batch, the hf: guard settles its own forward batch; None:
        the smoothed classifier's own. Results do not depend on it.
    rtol : float > 0
        Relative tolerance of sequential frontier mode.

    Examples
    --------
    >>> EstimationSpec(n=500, targets=[(1, 0.5)]).resolved_sampling
    'sequential'
    >>> EstimationSpec(seed=1.5)
    Traceback (most recent call last):
    ...
    hybridcert._validation.ParameterError: seed must be an integer >= 0, got 1.5
    """

    # The metadata is the command line's (hybridcert.cli.add_config_arguments generates the
    # options; the parsers of --target and --batch-size text are the CLI's own).
    n0: int = field(default=100, metadata={"help": "selection samples per example (100)"})
    n: int = field(default=10_000, metadata={"help": "estimation samples per example (10000)"})
    alpha: float = field(default=0.001, metadata={"help": "failure probability (0.001)"})
    d_max: int | None = field(default=None, metadata={
        "help": "largest discrete budget (default: min(8, attackable positions))"})
    protocol: str = field(default="shared", metadata={
        "choices": PROTOCOLS,
        "help": "shared-D (one estimate for all budgets) or the published loop over d"})
    seed: int = field(default=0, metadata={"help": "seed of data, model and noise (0)"})
    sampling: str | None = field(default=None, metadata={
        "choices": SAMPLINGS,
        "help": "fixed (default): n samples per example; sequential: stop once every question "
        "is decided (the --target ones, else every (d, r) of the report's grid), with an "
        "anytime-valid bound (up to --n-max samples); --target implies sequential"})
    n_max: int | None = field(default=None, metadata={
        "help": f"most samples under --sampling sequential ({SEQUENTIAL_N_MAX})"})
    targets: tuple | str | None = field(default=None, metadata={
        "flag": "--target", "action": "append", "metavar": "D:R",
        "help": "ask one question: is the input certified against D changed tokens and an L2 "
        "radius R? (repeatable; sequential sampling stops as soon as each is certified or out "
        "of reach)"})
    batch_size: int | str | None = field(default=1000, metadata={
        "help": "samples per model call (1000); auto (hf:): the guard halves its forward batch "
        "on out-of-memory, and records it"})
    rtol: float = field(default=0.02, metadata={"cli": False})  # frontier mode (Python only)

    _parameter_constraints: ClassVar[dict] = {
        "n0": [Interval(numbers.Integral, 1, None, closed="left")],
        "n": [Interval(numbers.Integral, 1, None, closed="left")],
        "alpha": [Interval(numbers.Real, 0, 1, closed="neither")],
        "d_max": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "protocol": [Options(PROTOCOLS)],
        "seed": [Interval(numbers.Integral, 0, None, closed="left")],
        "sampling": [Options(SAMPLINGS), None],
        "n_max": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), Options(("auto",)),
                       None],
        "rtol": [Interval(numbers.Real, 0, None, closed="neither")],
    }

    def __post_init__(self):
        validate_params({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                        self._parameter_constraints)
        # plain Python numbers: the spec is written to run.json as it is
        for name in ("n0", "n", "seed", "d_max", "n_max"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        for name in ("alpha", "rtol"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.batch_size not in (None, "auto"):
            object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "targets", _targets(self.targets))
        self._check()

    def _check(self) -> None:
        """The rules between fields, each stated once."""
        sequential = self.resolved_sampling == "sequential"
        if self.targets is not None and not sequential:
            raise ParameterError("targets", "None with sampling='fixed' (a target is a question "
                                 "that sequential sampling answers)", self.targets)
        if self.n_max is not None and not sequential:
            raise ParameterError("n_max", "None with fixed sampling (it bounds sequential "
                                 "sampling; fixed sampling draws n)", self.n_max)
        if sequential and self.protocol != "shared":
            raise ParameterError("protocol", "shared with sequential sampling (per_budget is a "
                                 "fixed-n cost baseline)", self.protocol)
        if self.d_max is not None and isinstance(self.targets, tuple) and self.targets and \
                isinstance(self.targets[0], tuple):
            top = max(d for d, _ in self.targets)
            if top > self.d_max:
                raise ParameterError("targets", f"budgets d at most d_max = {self.d_max}",
                                     self.targets)

    @property
    def resolved_sampling(self) -> str:
        """The sampling rule: as given, else sequential when targets are asked, else fixed."""
        if self.sampling is not None:
            return self.sampling
        return "sequential" if self.targets is not None else "fixed"

    @property
    def resolved_n_max(self) -> int | None:
        """The most estimation samples of sequential sampling; None under fixed sampling."""
        if self.resolved_sampling != "sequential":
            return None
        return SEQUENTIAL_N_MAX if self.n_max is None else self.n_max

    def replace(self, **changes) -> EstimationSpec:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The spec as ``run.json`` records it: sampling and ``n_max`` resolved, JSON types."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(sampling=self.resolved_sampling, n_max=self.resolved_n_max,
                   targets=_targets_json(self.targets))
        return out


def _targets(targets):
    """``targets`` as the spec holds them: None, "frontier", a tuple of radii or of (d, r)."""
    if targets is None or (isinstance(targets, str) and targets == "frontier"):
        return targets
    expected = "None, 'frontier', a non-empty sequence of radii r >= 0, or of (d, r) pairs: " \
               "an integer budget d >= 0 and a finite radius r >= 0"
    if isinstance(targets, str) or not isinstance(targets, list | tuple | np.ndarray):
        raise ParameterError("targets", expected, targets)
    items = list(targets)
    radius = Interval(numbers.Real, 0, None, closed="left")
    budget = Interval(numbers.Integral, 0, None, closed="left")
    if items and all(radius.is_satisfied_by(_plain(t)) for t in items):
        return tuple(float(t) for t in items)
    if items and all(isinstance(t, list | tuple | np.ndarray) and len(t) == 2 and
                     budget.is_satisfied_by(_plain(t[0])) and radius.is_satisfied_by(_plain(t[1]))
                     for t in items):
        return tuple((int(t[0]), float(t[1])) for t in items)
    raise ParameterError("targets", expected, targets)


def _plain(value):
    """A numpy scalar as the Python number it holds (a numpy bool stays a bool: refused)."""
    return value.item() if isinstance(value, np.generic) else value


def _targets_json(targets):
    if isinstance(targets, tuple):
        return [list(t) if isinstance(t, tuple) else t for t in targets]
    return targets
