"""What a measurement is: one aggregate value, a split's results with their per-example values."""

from __future__ import annotations

from dataclasses import dataclass, field

# per_example[stage][split][metric]: one value per row of the split (None where the metric does not apply).
PerExample = dict[str, dict[str, dict[str, list[float | None]]]]


@dataclass(frozen=True)
class MetricValue:
    """One measurement; `layer` is set for probes, `step` for points measured during forgetting."""

    stage: str
    split: str
    name: str
    value: float
    layer: int | None = None
    step: int | None = None


@dataclass
class SplitResult:
    """Aggregates by metric name, per-example values aligned with the rows (None where a metric does not apply),
    and the MIA scores of every row's (context, target) pair by attack (see `evaluate.mia_scores`)."""

    aggregates: dict[str, float]
    per_example: dict[str, list[float | None]]
    mia: dict[str, list[float]] = field(default_factory=dict)
