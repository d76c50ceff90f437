"""The decision rule of a smoothed classifier, one value shared by the engine, baselines and report."""

from __future__ import annotations

from dataclasses import dataclass

from ._validation import check_int, check_open_unit

__all__ = ["DecisionRule"]

KINDS = ("majority", "threshold")


@dataclass(frozen=True)
class DecisionRule:
    """How the smoothed classifier turns label probabilities into a decision.

    Parameters
    ----------
    kind : {"majority", "threshold"}
        ``"majority"``: the most probable of ``num_classes`` labels, certified
        while its probability stays above 1/2 (Cohen's rule). ``"threshold"``:
        the safety-filter rule, flag ``target_label`` iff its smoothed
        probability is at least ``tau``; the certificate says "stays flagged".
    tau : float in (0, 1)
        Threshold of the threshold rule; the majority rule always uses 1/2.
    target_label : int
        Label the threshold rule certifies (1 = unsafe in the bundled tasks);
        ``None`` under the majority rule.
    num_classes : int >= 2

    Examples
    --------
    >>> DecisionRule("threshold", tau=0.05, target_label=1)
    DecisionRule(kind='threshold', tau=0.05, target_label=1, num_classes=2)
    >>> DecisionRule("majority", num_classes=3).tau
    0.5
    >>> DecisionRule("majority", tau=0.1)
    Traceback (most recent call last):
    ...
    ValueError: tau applies to the threshold rule; the majority rule uses 1/2, got tau=0.1
    """

    kind: str = "majority"
    tau: float | None = None
    target_label: int | None = None
    num_classes: int = 2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"decision must be one of {KINDS}, got {self.kind!r}")
        classes = check_int("num_classes", self.num_classes, minimum=2)
        object.__setattr__(self, "num_classes", classes)
        if self.kind == "threshold":
            tau = float(check_open_unit("tau", 0.5 if self.tau is None else self.tau))
            target = check_int("target_label", 1 if self.target_label is None
                               else self.target_label, minimum=0)
            if target >= classes:
                raise ValueError(f"target_label must be < num_classes ({classes}), got {target}")
        else:
            if self.tau is not None and self.tau != 0.5:
                raise ValueError("tau applies to the threshold rule; the majority rule uses 1/2, "
                                 f"got tau={self.tau}")
            tau, target = 0.5, None
        object.__setattr__(self, "tau", tau)
        object.__setattr__(self, "target_label", target)

    @property
    def threshold(self) -> bool:
        return self.kind == "threshold"

    def describe(self) -> dict:
        """The rule as recorded in certificates and ``run.json``."""
        return {"decision": self.kind, "tau": self.tau, "target_label": self.target_label,
                "num_classes": self.num_classes}

    @classmethod
    def resolve(cls, decision, *, tau, num_classes, target_label) -> tuple[DecisionRule, int]:
        """A smoother's ``decision`` argument (a rule or its kind) as ``(rule, target label)``.

        With a kind, ``tau``, ``num_classes`` and ``target_label`` come from the
        other arguments; the target label is returned under the majority rule too
        (it is the default label of ``estimate``).
        """
        if not isinstance(decision, DecisionRule):
            check_int("target_label", target_label, minimum=0)
            decision = cls(decision, tau=tau, num_classes=num_classes,
                           target_label=target_label if decision == "threshold" else None)
        target = target_label if decision.target_label is None else decision.target_label
        if target >= decision.num_classes:
            raise ValueError(f"target_label must be < num_classes ({decision.num_classes})")
        return decision, target

    @classmethod
    def from_settings(cls, settings: dict) -> DecisionRule:
        """The rule recorded in a certificate's or a run's settings."""
        kind = settings.get("decision", "majority")
        threshold = kind == "threshold"
        return cls(kind, tau=settings.get("tau") if threshold else None,
                   target_label=settings.get("target_label", 1) if threshold else None,
                   num_classes=settings.get("num_classes", 2))

    def evaluation_pool(self, rows: list[dict]) -> list[dict]:
        """The examples a metric is computed over: all of them (majority), or the truly
        positive ones (threshold rule, whose certificate says "stays flagged")."""
        if self.threshold:
            return [r for r in rows if r["true_label"] == self.target_label]
        return rows

    def is_certified_hit(self, row: dict) -> bool:
        """A correct certified prediction: the right label, or a flag on a truly positive one."""
        if self.threshold:
            return row["true_label"] == self.target_label and row["predicted"] == self.target_label
        return bool(row["correct"])
