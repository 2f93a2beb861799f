"""Forgetting methods as the API sees them: names, descriptions, validated params (torch-free).

The API validates a request's `method` and `method_params` against METHODS and publishes
`json_schema()`; the worker parses the same params before running the torch implementation registered
under the same name in `worker.engine.methods.implementations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.engine.registry import Registry


class MethodParams(BaseModel):
    """Parameters every method shares: optimiser, schedule, LoRA shape and the chance stop."""

    model_config = ConfigDict(extra="forbid")

    # LoRA paper (Hu et al. 2021, RoBERTa-base on GLUE) used 4e-4..5e-4. Measured here: on SmolLM2-135M,
    # random_label at 5e-4 (batch 8) brings a known 36-row task to chance in 3 epochs; 1e-4 barely moves it.
    learning_rate: float = Field(5e-4, gt=0, le=1, description="AdamW learning rate of the LoRA parameters.")
    # Lethe default: with stop_at_chance the run usually ends earlier.
    epochs: int = Field(5, ge=1, le=100, description="Passes over the forget-train rows.")
    max_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Stop after this many optimiser steps; null means no cap."
    )
    # Lethe default: fits SmolLM2-135M on a 2-core CPU; raise it on a GPU.
    batch_size: int = Field(8, ge=1, le=512, description="Rows per optimiser step (also the scoring batch).")
    # peft's LoraConfig default rank.
    lora_rank: int = Field(8, ge=1, le=256, description="Rank r of the LoRA matrices on every linear layer.")
    # Convention alpha = 2r (LoRA update scaled by alpha / r = 2).
    lora_alpha: int = Field(16, ge=1, le=1024, description="LoRA alpha; the update is scaled by alpha / rank.")
    # Seed paper protocol: forget until forget-train predictions are near random.
    stop_at_chance: bool = Field(
        True,
        description="Stop after the first epoch whose forget-train accuracy is <= chance + chance_tolerance.",
    )
    # Lethe default: 5 points of accuracy.
    chance_tolerance: float = Field(
        0.05, ge=0, le=1, description="How close to chance accuracy counts as forgotten for stop_at_chance."
    )


class GradientAscentParams(MethodParams):
    """Gradient ascent has no parameters beyond the shared ones."""


class RandomLabelParams(MethodParams):
    """Random-label fine-tuning has no parameters beyond the shared ones."""


@dataclass(frozen=True)
class MethodSpec:
    """A method as published by the API: name, description and params model."""

    name: str
    description: str
    params_model: type[MethodParams]

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of the method's params."""
        return self.params_model.model_json_schema()

    def parse(self, params: dict[str, Any]) -> MethodParams:
        """Validated params with defaults filled in (pydantic ValidationError on bad input)."""
        return self.params_model.model_validate(params)


METHODS: Registry[MethodSpec] = Registry("method")

METHODS.register(
    "gradient_ascent",
    MethodSpec(
        name="gradient_ascent",
        description=(
            "Gradient ascent on the forget-train rows: minimise loss = -NLL of the true answer's continuation "
            "tokens given the prompt, i.e. push the probability of the correct answer down."
        ),
        params_model=GradientAscentParams,
    ),
)
METHODS.register(
    "random_label",
    MethodSpec(
        name="random_label",
        description=(
            "Random-label fine-tuning (Zhang, Choshen & Andreas, 'Unforgettable Generalization in Language "
            "Models', arXiv 2409.02228): fine-tune on the forget-train rows with each answer replaced by a "
            "label drawn uniformly at random from the row's choices, drawn anew every epoch."
        ),
        params_model=RandomLabelParams,
    ),
)
