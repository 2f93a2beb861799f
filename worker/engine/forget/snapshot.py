"""Where a forget run stands, taken at the start of each training stage and every few optimiser steps, so that a run
stopped there goes on to the same adapter and the same metrics; and its form as safetensors bytes plus JSON.

A run resumes at the stage it was in: the evaluations before it are not redone (their metrics, per-example values
and what later stages read from them are in the snapshot), and an objective prepares again from the weights the
stage started with (`before_forgetting`), which `prepare` turns into the same state every time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from worker.engine.lm.lora import LoraState
from worker.engine.metrics.values import CurvePoint, MetricValue, PerExample
from worker.engine.training.snapshot import TrainingSnapshot

Stage = Literal["finetune", "forget"]


@dataclass
class ForgetSnapshot:
    """A forget run in its fine-tune or forget stage.

    `metrics`, `curves` and `per_example`: everything measured so far (forgetting's curve points in `curves`;
    PrivLeak and forget quality compare later stages with the base stage's per-example values). In the forget
    stage also: the adapter before forgetting, every tracked split's primary score then (the stopping target and
    forget ratios are relative to it), the best weights the utility floor may restore and their forget score, and
    the evaluations and rows forgetting has done (the progress estimate's correction). `progress_done`: the
    progress estimate's units done.
    """

    stage: Stage
    training: TrainingSnapshot
    metrics: list[MetricValue]
    curves: list[CurvePoint]
    per_example: PerExample
    progress_done: float
    before_forgetting: LoraState = field(default_factory=dict)
    before_scores: dict[str, float] = field(default_factory=dict)
    best: LoraState = field(default_factory=dict)
    best_score: float = float("inf")
    checks: int = 0
    trained_rows: int = 0

    def copy_measurements(self) -> tuple[list[MetricValue], list[CurvePoint], PerExample]:
        """Fresh copies of the metrics, curve points and per-example values, for a resumed run to go on appending
        to."""
        return list(self.metrics), list(self.curves), copy.deepcopy(self.per_example)


def encode_snapshot(snapshot: ForgetSnapshot) -> tuple[bytes, dict[str, Any]]:
    """The snapshot as safetensors bytes (every tensor, RNG states as uint8) and a JSON-able dict (the rest)."""
    tensors = {f"training/{name}": t for name, t in snapshot.training.tensors().items()}
    tensors |= _prefixed("before_forgetting", snapshot.before_forgetting) | _prefixed("best", snapshot.best)
    fields = {
        "stage": snapshot.stage,
        "training": snapshot.training.fields(),
        "metrics": [asdict(m) for m in snapshot.metrics],
        "curves": [asdict(point) for point in snapshot.curves],
        "per_example": snapshot.per_example,
        "progress_done": snapshot.progress_done,
        "before_scores": snapshot.before_scores,
        "best_score": snapshot.best_score,
        "checks": snapshot.checks,
        "trained_rows": snapshot.trained_rows,
    }
    return save_safetensors(tensors), fields


def decode_snapshot(data: bytes, fields: Mapping[str, Any]) -> ForgetSnapshot:
    """The inverse of `encode_snapshot`."""
    groups: dict[str, dict[str, torch.Tensor]] = {"training": {}, "before_forgetting": {}, "best": {}}
    for flat, tensor in load_safetensors(data).items():
        group, name = flat.split("/", 1)
        groups[group][name] = tensor
    stage = fields["stage"]
    if stage not in ("finetune", "forget"):
        raise ValueError(f"unknown snapshot stage {stage!r}")
    return ForgetSnapshot(
        stage=stage,
        training=TrainingSnapshot.from_parts(groups["training"], fields["training"]),
        metrics=[MetricValue(**m) for m in fields["metrics"]],
        curves=[CurvePoint(**point) for point in fields["curves"]],
        per_example=fields["per_example"],
        progress_done=float(fields["progress_done"]),
        before_forgetting=groups["before_forgetting"],
        before_scores=dict(fields["before_scores"]),
        best=groups["best"],
        best_score=float(fields["best_score"]),
        checks=int(fields["checks"]),
        trained_rows=int(fields["trained_rows"]),
    )


def _prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # CPU copies: safetensors saves CPU tensors, and refuses two names sharing one storage.
    return {f"{prefix}/{name}": t.detach().to("cpu", copy=True).contiguous() for name, t in state.items()}


@dataclass(frozen=True)
class Snapshots:
    """A forget run's snapshots: handed to `save` at the start of each training stage and every `every` optimiser
    steps; `resume`, when set, is the one the run goes on from."""

    every: int
    save: Callable[[ForgetSnapshot], None]
    resume: ForgetSnapshot | None = None
