"""The quality gate of retraining: a candidate replaces the serving model only if it is not worse.

Two comparisons, both of the two models on the same documents, neither of which the candidate learned
from: macro-F1 on the held-out test split, and, when enough feedback is held out, accuracy on the
labelled feedback (the live traffic's own distribution). "Not worse" allows a tolerance of a fraction
of a point: adding a few hundred documents moves a model's test macro-F1 by about half a point either
way (measured: docs/deployment.md), and a gate that refuses that noise would refuse every retraining.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GateRules:
    test_macro_f1_tolerance: float = 0.005
    feedback_accuracy_tolerance: float = 0.02
    # Fewer held-out labels than this say too little about live accuracy: that comparison is skipped.
    min_holdout_labels: int = 30


@dataclass(frozen=True)
class Scores:
    """One model's scores; `feedback_accuracy` is None without enough held-out feedback."""

    test_macro_f1: float
    feedback_accuracy: float | None = None


@dataclass(frozen=True)
class Verdict:
    publish: bool
    reasons: list[str] = field(default_factory=list)
    serving: Scores | None = None
    candidate: Scores | None = None
    holdout_labels: int = 0

    def as_fields(self) -> dict:
        return {
            "publish": self.publish,
            "reasons": self.reasons,
            "serving": asdict(self.serving) if self.serving else None,
            "candidate": asdict(self.candidate) if self.candidate else None,
            "holdout_labels": self.holdout_labels,
        }


def decide(serving: Scores, candidate: Scores, holdout_labels: int, rules: GateRules) -> Verdict:
    """Publish when the candidate is not worse (within the tolerances) on every comparison made."""
    reasons = []
    if candidate.test_macro_f1 < serving.test_macro_f1 - rules.test_macro_f1_tolerance:
        reasons.append(
            f"test split: candidate macro-F1 {candidate.test_macro_f1:.4f} is worse than the serving "
            f"model's {serving.test_macro_f1:.4f} by more than {rules.test_macro_f1_tolerance}"
        )
    compared = (serving.feedback_accuracy, candidate.feedback_accuracy)
    if holdout_labels >= rules.min_holdout_labels and None not in compared:
        if candidate.feedback_accuracy < serving.feedback_accuracy - rules.feedback_accuracy_tolerance:
            reasons.append(
                f"feedback: candidate accuracy {candidate.feedback_accuracy:.4f} on {holdout_labels} "
                f"held-out labels is worse than the serving model's {serving.feedback_accuracy:.4f} by "
                f"more than {rules.feedback_accuracy_tolerance}"
            )
    return Verdict(not reasons, reasons, serving, candidate, holdout_labels)
