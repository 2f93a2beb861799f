"""What a measurement is: one aggregate value with its interval, a point of a training curve, a split's results
with their per-example values."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.engine.metrics.intervals import Estimate

# per_example[stage][split][metric]: one value per row of the split (None where the metric does not apply).
PerExample = dict[str, dict[str, dict[str, list[float | None]]]]


@dataclass(frozen=True)
class MetricValue:
    """One measurement of a stage: exactly one per (stage, split, name, layer); `layer` is set for probes. `n` is
    the number of rows it rests on and `ci_low`/`ci_high` its 95% interval (see `intervals.py`), None where none
    is drawn."""

    stage: str
    split: str
    name: str
    value: float
    layer: int | None = None
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def of(cls, stage: str, split: str, name: str, estimate: Estimate, layer: int | None = None) -> MetricValue:
        """The measurement an `Estimate` gives."""
        return cls(stage, split, name, estimate.value, layer, estimate.n, estimate.ci_low, estimate.ci_high)


@dataclass(frozen=True)
class CurvePoint:
    """A split's primary score measured during forgetting, after `step` optimiser steps: a point of the forgetting
    curve, not a claim about the stored adapter (the `forgotten` stage's metrics are)."""

    split: str
    name: str
    step: int
    value: float


@dataclass
class SplitResult:
    """Estimates (value, n, interval) by metric name, per-example values aligned with the rows (None where a metric
    does not apply), the MIA scores of every row's (context, target) pair by attack (see `evaluate.mia_scores`),
    and for qa rows every row's truth ratio R by the TOFU paper (None where the row has no perturbed answers; empty
    when no row has; forget quality compares its distributions)."""

    estimates: dict[str, Estimate]
    per_example: dict[str, list[float | None]]
    mia: dict[str, list[float]] = field(default_factory=dict)
    truth_ratios: list[float | None] = field(default_factory=list)

    @property
    def aggregates(self) -> dict[str, float]:
        """Each metric's value alone."""
        return {name: estimate.value for name, estimate in self.estimates.items()}
