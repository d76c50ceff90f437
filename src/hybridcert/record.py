"""The certificate record: :class:`Certificate`, :class:`Estimate`, and :func:`recompute`.

A :class:`Certificate` holds what :meth:`SmoothedClassifier.certify
<hybridcert.smoothing.SmoothedClassifier.certify>` measured (label counts,
samples, looks) and the settings it depends on, so that its bounds and radii
can be recomputed from the record alone, at another ``alpha`` or ``tau``,
without a model call (:func:`recompute`; the report's tau curve does this).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

import numpy as np

from . import sequential as seq
from ._validation import check_open_unit
from .certificate.frontier import certified_frontier
from .certificate.hybrid import (
    multiclass_radius,
    worst_case_probability,
    worst_case_probability_upper,
)
from .noise import attack_atoms
from .sampling import ABSTAIN, LabelCounts
from .stats import clopper_pearson_lower, clopper_pearson_upper, split_alpha

__all__ = ["Certificate", "Estimate", "recompute"]


@dataclass(frozen=True)
class Certificate:
    """The outcome of :meth:`SmoothedClassifier.certify`, with what is needed to recompute it.

    Attributes
    ----------
    label : int
        The certified label (the target label under the threshold rule), or
        ``ABSTAIN`` when the lower bound does not clear ``tau``.
    p_lower : float
        Lower confidence bound on the smoothed probability of ``label``
        (the smallest over budgets under the per-budget protocol).
    radii : tuple of float
        ``radii[d]``: certified L2 radius against at most ``d`` discrete
        changes; 0.0 where ``d`` is not certified.
    largest_budget : int
        Largest ``d`` certified (at radius 0 or more); -1 if none.
    count, n : tuple of int
        Samples (out of ``n``) where the base classifier returned ``label``: one
        entry for shared-D, one per budget for the per-budget protocol.
    n0 : int
        Selection samples (0 under the threshold rule, whose label is fixed).
    abstentions, errors : int
        Samples the model abstained on, and of those, samples lost to
        exceptions (with ``first_error``).
    model_calls : int
        Noisy samples sent to the base classifier (``n0`` plus the samples
        actually used: under sequential sampling ``n`` is where it stopped).
    settings : dict
        Everything the certificate depends on: alpha, tau, sigma, protocol,
        the kernel's attack specification per budget, the threat region, the
        base classifier's ``describe()`` when it has one, the noise stream, the
        multiclass rule, and under sequential sampling its looks, the counts at
        the looks taken, the targets and their decisions.
    runner_up : tuple of int
        Under the multiclass runner-up rule, the largest count of any other
        label per estimate (empty otherwise).
    """

    label: int
    p_lower: float
    radii: tuple[float, ...]
    largest_budget: int
    count: tuple[int, ...]
    n: tuple[int, ...]
    n0: int
    abstentions: int
    errors: int
    model_calls: int
    settings: dict = field(compare=False)
    first_error: str | None = None
    runner_up: tuple[int, ...] = ()

    @property
    def certified(self) -> bool:
        return self.label != ABSTAIN and self.largest_budget >= 0

    def radius(self, d: int) -> float:
        """Certified radius against at most ``d`` changes (0.0 beyond ``d_max``)."""
        return self.radii[d] if 0 <= d < len(self.radii) else 0.0

    def to_dict(self) -> dict:
        """A JSON-able dict (radii as a list, settings included)."""
        out = asdict(self)
        out["radii"] = list(self.radii)
        out["count"], out["n"] = list(self.count), list(self.n)
        out["runner_up"] = list(self.runner_up)
        return out

    @property
    def decisions(self) -> dict[tuple[int, float], str]:
        """Sequential target mode: ``(d, r) -> "certified" | "dropped" | "undecided"``."""
        info = self.settings.get("sequential") or {}
        return {(int(d), float(r)): status
                for (d, r), status in zip(info.get("targets") or [], info.get("status") or [])}


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate of one smoothed probability (:meth:`SmoothedClassifier.estimate`).

    ``lower`` and ``upper`` are one-sided Clopper-Pearson bounds, each at level
    ``alpha``: ``P[p >= lower] >= 1 - alpha`` and ``P[p <= upper] >= 1 - alpha``.
    """

    label: int
    count: int
    n: int
    lower: float
    upper: float
    abstentions: int
    errors: int

    @property
    def p(self) -> float:
        return self.count / self.n

    @classmethod
    def from_counts(cls, label: int, seen: LabelCounts, n: int, alpha: float) -> Estimate:
        k = int(seen.counts[label])
        return cls(label=label, count=k, n=n, lower=clopper_pearson_lower(k, n, alpha),
                   upper=clopper_pearson_upper(k, n, alpha), abstentions=seen.abstentions,
                   errors=seen.errors)


def recompute(cert: Certificate, *, alpha: float | None = None,
              tau: float | None = None) -> Certificate:
    """The same certificate at another ``alpha`` or ``tau``, from its counts (no model call).

    A new ``tau`` applies to the threshold rule only; the label whose samples
    were counted is kept (so a certificate that abstained at one ``tau`` can
    certify at another), and this is valid as long as ``alpha`` and ``tau``
    are chosen without looking at this example's counts.

    Sequential certificates record the count at every look they took; the
    anytime-valid bound is recomputed from them at the new level (valid
    whatever stopped the sampling), and the target decisions are redone:
    "certified" where the new bound reaches the target's threshold,
    "undecided" elsewhere (the stopping rule ran at the old settings).
    """
    if not isinstance(cert, Certificate):
        raise TypeError(f"cert must be a Certificate, got {type(cert).__name__}")
    settings = dict(cert.settings)
    if alpha is not None:
        settings["alpha"] = float(check_open_unit("alpha", alpha))
        settings["level"] = settings["alpha"] if settings["protocol"] == "shared" else \
            split_alpha(settings["alpha"], settings["d_max"] + 1)
    if tau is not None:
        if settings["decision"] != "threshold":
            raise ValueError("tau can only be changed for decision='threshold'")
        settings["tau"] = float(check_open_unit("tau", tau))
    counted = settings.get("counted_label", cert.label)
    cert = replace(cert, label=counted)
    if settings.get("sampling") != "sequential":
        return certificate_from_counts(replace(cert, settings=settings))
    info = dict(settings["sequential"])
    cs = seq.UnionClopperPearson(info["looks"], alpha=settings["alpha"])
    settings["level"] = info["level_per_look"] = settings["alpha"] / len(cs.looks)
    info["alpha"] = settings["alpha"]
    lower = 0.0
    if counted != ABSTAIN:
        lower = max([float(cs.lower(k, j)) for j, k in enumerate(info["look_counts"])],
                    default=0.0)
    if info.get("targets"):
        targets = [(int(d), float(r)) for d, r in info["targets"]]
        p_star = target_thresholds(settings["attack"][0], settings["sigma"], settings["tau"],
                                    targets)
        info["p_star"] = [float(p) for p in p_star]
        info["status"] = [STATUS_NAMES[seq.CERTIFIED] if lower >= p else "undecided" for p in p_star]
    settings["sequential"] = info
    return with_radii(replace(cert, settings=settings, p_lower=lower), [lower])


def certificate_from_counts(cert: Certificate) -> Certificate:
    """A fixed-sampling certificate from its counts and settings: bounds, then radii."""
    s = cert.settings
    if cert.label == ABSTAIN:
        return with_radii(replace(cert, p_lower=0.0), [0.0] * len(cert.count))
    if s.get("multiclass_rule") == "runner_up" and cert.runner_up:
        # alpha split: half on A's lower bound, half over the other labels' upper bounds
        # (Bonferroni over num_classes - 1 labels; CP_upper grows with the count, so the largest
        # other count gives the largest of their bounds).
        low = s["level"] / 2
        up = s["level"] / (2 * (s["num_classes"] - 1))
        p_lowers = [float(clopper_pearson_lower(k, m, low)) for k, m in zip(cert.count, cert.n)]
        p_uppers = [min(float(clopper_pearson_upper(b, m, up)), 1.0 - pl)
                    for b, m, pl in zip(cert.runner_up, cert.n, p_lowers)]
        return with_radii(replace(cert, p_lower=min(p_lowers)), p_lowers, p_uppers)
    p_lowers = [float(clopper_pearson_lower(k, m, s["level"])) for k, m in zip(cert.count, cert.n)]
    return with_radii(replace(cert, p_lower=min(p_lowers)), p_lowers)


def with_radii(cert: Certificate, p_lowers: list[float],
                p_uppers: list[float] | None = None) -> Certificate:
    """Radii and largest budget from the lower bound(s) and the recorded attack specifications.

    Shared-D: one bound certifies every budget. Per-budget: the ``d``-th
    (independent) bound certifies budget ``d``; the reported radius at ``d`` is
    the minimum over ``d' <= d``, so the frontier stays monotone. With
    ``p_uppers`` (the multiclass runner-up rule) a budget is certified where
    A's worst case beats the runner-up's best case.
    """
    s = cert.settings
    d_max = s["d_max"]
    if cert.label == ABSTAIN:
        return replace(cert, radii=(0.0,) * (d_max + 1), largest_budget=-1)
    sigma = 1.0 if s["sigma"] is None else s["sigma"]  # discrete-only: radii are zeroed below

    def frontier(i, top):
        spec = s["attack"][i]
        if p_uppers is not None:
            return _runner_up_frontier(p_lowers[i], p_uppers[i], sigma, spec, top)
        radii, largest = _frontier(float(p_lowers[i]), json.dumps(spec, sort_keys=True),
                                   float(sigma), float(s["tau"]), top)
        return np.asarray(radii), np.arange(top + 1) <= largest

    if len(p_lowers) == 1:
        radii, certified = frontier(0, d_max)
    else:
        fronts = [frontier(d, d) for d in range(len(p_lowers))]
        radii = np.minimum.accumulate([r[-1] for r, _ in fronts])
        certified = np.logical_and.accumulate([c[-1] for _, c in fronts])
    largest = int(certified.sum()) - 1
    radii = np.where(certified, radii, 0.0) if s["sigma"] is not None else np.zeros(d_max + 1)
    return replace(cert, radii=tuple(float(r) for r in radii), largest_budget=largest,
                   label=cert.label if largest >= 0 else ABSTAIN)


def _runner_up_frontier(p_lower: float, p_upper: float, sigma: float, spec: dict, top: int):
    """Radii and certified budgets ``0..top`` of the runner-up rule (worst over attacker options)."""
    radii, certified = np.zeros(top + 1), np.zeros(top + 1, dtype=bool)
    for d in range(top + 1):
        options = attack_atoms(spec, d)
        radii[d] = min(float(multiclass_radius(p_lower, p_upper, sigma=sigma, atoms=a))
                       for a in options)
        # At radius 0 the discrete bounds decide: A's worst case must beat B's best case.
        certified[d] = all(
            worst_case_probability(p_lower, sigma=sigma, atoms=a, radius=0.0)
            > worst_case_probability_upper(p_upper, sigma=sigma, atoms=a, radius=0.0)
            for a in options)
    certified = np.logical_and.accumulate(certified)
    return np.minimum.accumulate(radii), certified


STATUS_NAMES = {seq.OPEN: "undecided", seq.CERTIFIED: "certified", seq.DROPPED: "dropped"}


def target_thresholds(spec: dict, sigma: float | None, tau: float,
                       targets: list[tuple[int, float]]) -> np.ndarray:
    """``p*(d, r)`` of each target (cached per attack specification)."""
    radii = tuple(sorted({r for _, r in targets}))
    table = _threshold_table(json.dumps(spec, sort_keys=True), sigma, tau,
                             max(d for d, _ in targets), radii)
    return np.array([table[d, radii.index(r)] for d, r in targets])


@lru_cache(maxsize=4096)
def _frontier(p_lower: float, spec_json: str, sigma: float, tau: float,
              top: int) -> tuple[tuple[float, ...], int]:
    """``certified_frontier`` of one bound, cached: the examples of a run share their attack
    specification, and sequential runs stop at a few distinct counts, so many certificates have
    the same lower bound (a pure function of its arguments: the radii are those recomputed)."""
    spec = json.loads(spec_json)
    front = certified_frontier(p_lower, sigma=sigma, tau=tau,
                               atoms=[attack_atoms(spec, d) for d in range(top + 1)])
    return tuple(float(r) for r in front.radii), int(front.largest_budget)


@lru_cache(maxsize=256)
def _threshold_table(spec_json: str, sigma, tau, d_max, radii) -> np.ndarray:
    spec = json.loads(spec_json)
    return seq.certification_thresholds(radii, d_max=d_max, sigma=sigma, tau=tau,
                                        atoms=lambda d: attack_atoms(spec, d))
