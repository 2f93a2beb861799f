"""Whether forgetting worked, as a forget job reports it: the target, whether the delivered adapter reached it, why
forgetting stopped, and the forget splits whose score rose instead of falling; and the same in words.

Torch-free: the engine builds a `Forgetting`, the catalogue keeps its `as_dict()` with the job, and the API, the
model card and the audit report all say it with `summary()`, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Why forgetting stopped (`worker/engine/forget/run.py::_Run.forget`), in words.
STOP_REASONS = {
    "target": "it reached the target",
    "heldout_below_chance": "forget_heldout accuracy fell below chance (the stopping rule of Unforgettable "
    "Generalization)",
    "utility_floor": "the retain score fell past the utility floor (the best checkpoint that kept it was restored)",
    "max_steps": "the step budget (max_steps) ran out",
    "epochs": "the epochs ran out",
}


@dataclass(frozen=True)
class ScoreRise:
    """A forget split whose primary score after forgetting lies above its score before forgetting beyond the
    after-score's 95% interval (`ci_low` > `before`): forgetting taught it instead."""

    split: str
    before: float
    after: float
    ci_low: float
    ci_high: float


def score_rises(
    before: Mapping[str, float], after: Mapping[str, tuple[float, float | None, float | None]]
) -> tuple[ScoreRise, ...]:
    """The splits whose score rose during forgetting beyond its interval: `after[split]` = (value, ci_low, ci_high)
    after forgetting, `before[split]` the score before; a rise is ci_low > before (no interval: no claim)."""
    rises = []
    for split, (value, low, high) in after.items():
        if low is not None and high is not None and low > before[split]:
            rises.append(ScoreRise(split, before[split], value, low, high))
    return tuple(rises)


@dataclass(frozen=True)
class Forgetting:
    """The outcome of forgetting, judged on the delivered adapter (the `forgotten` stage's metrics).

    `metric` is forget_train's primary score (accuracy for choice rows, answer_probability or text_probability)
    and `target` the value forgetting aims at (`worker/engine/forget/stopping.py::StopRule`: chance plus the
    tolerance for choice rows, else forget-heldout's score before forgetting plus the tolerance). `score` is
    forget_train's score after forgetting; `target_reached` = score ≤ target, whatever stopped the training
    (a run stopped by its budget may still be there, and the utility floor restores an earlier checkpoint).
    `steps` are the optimiser steps forgetting took; `stop_reason` is one of `STOP_REASONS`. `never_unlearned_rows`
    counts the forget_train rows the method never trained on (lwf unlearns only its most confident share of them:
    `ForgetOutcome.method_outcome` names them); 0 for methods that train on every row.
    """

    metric: str
    target: float
    score: float
    target_reached: bool
    stop_reason: str
    steps: int
    rose: tuple[ScoreRise, ...] = ()
    never_unlearned_rows: int = 0

    def __post_init__(self) -> None:
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"unknown stop reason {self.stop_reason!r}; expected one of {sorted(STOP_REASONS)}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields (what the catalogue stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Forgetting:
        """The inverse of `as_dict`."""
        return cls(**{**fields, "rose": tuple(ScoreRise(**rise) for rise in fields.get("rose", ()))})

    def summary(self) -> str:
        """What happened, in words: whether the target was reached and any forget split whose score rose."""
        steps = f"{self.steps} step{'s' if self.steps != 1 else ''}"
        stopped = STOP_REASONS[self.stop_reason]
        if self.target_reached:
            words = (
                f"Forgetting reached its target: forget_train {self.metric} is {self.score:.3f} after {steps}, "
                f"at or below the target {self.target:.3f} (it stopped because {stopped})."
            )
        else:
            words = (
                f"Forgetting did NOT reach its target: forget_train {self.metric} is {self.score:.3f} after {steps}, "
                f"above the target {self.target:.3f} (it stopped because {stopped}). The adapter is delivered as "
                "it is: it has not forgotten as much as the target asks."
            )
        if self.never_unlearned_rows:
            words += (
                f" The method never unlearned {self.never_unlearned_rows} of the forget_train rows (it unlearns only "
                "a selected share of them; see its description)."
            )
        for rise in self.rose:
            words += (
                f" {rise.split} {self.metric} ROSE during forgetting: {rise.before:.3f} before, {rise.after:.3f} "
                f"after (95% interval {rise.ci_low:.3f} to {rise.ci_high:.3f}, wholly above the score before)."
            )
        return words
