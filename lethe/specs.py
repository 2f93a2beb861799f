"""Typed job specs: what the API writes into `jobs.spec` and the worker reads back with `model_validate`.

The API builds a spec only from a request it has validated (method and attack params already parsed against
their registries, defaults filled in), so the worker never re-checks the catalogue's JSON by hand.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lethe.attacks import ATTACKS, AttackParams, Thresholds
from lethe.methods import METHODS, MethodParams


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FinetuneSpec(_Spec):
    """The optional fine-tune on forget-train before forgetting (the seed paper's protocol)."""

    epochs: int = Field(ge=1, le=100)
    learning_rate: float = Field(gt=0, le=1)


class MethodChoice(_Spec):
    """A method from `lethe.methods.METHODS` and its params as validated (every default filled in)."""

    name: str
    params: dict[str, Any]

    def parsed(self) -> MethodParams:
        """The params as the method's typed model."""
        return METHODS.get(self.name).parse(self.params)


class AttackChoice(_Spec):
    """An attack from `lethe.attacks.ATTACKS` and its params as validated (every default filled in)."""

    name: str
    params: dict[str, Any]

    def parsed(self) -> AttackParams:
        """The params as the attack's typed model."""
        return ATTACKS.get(self.name).parse(self.params)


class AuditSpec(_Spec):
    """Which attacks an audit runs, in order, and the thresholds that judge them."""

    attacks: list[AttackChoice] = Field(min_length=1)
    thresholds: Thresholds


class AuditJobSpec(AuditSpec):
    """An audit job: its attacks and thresholds, on one stored adapter."""

    adapter_id: uuid.UUID


class ForgetJobSpec(_Spec):
    """A forget job: the base model, the datasets, the split, the method and what else to run."""

    base_model: str
    # The source the base model's name resolved to when the job was accepted (see the catalogue's base_models).
    base_model_source: str
    # What the catalogue recorded of the base model's weights when the job was accepted (lethe/base_model_sources.py);
    # a worker refuses weights with another digest. None: not recorded (the worker's digest goes into provenance).
    base_model_weights_sha256: str | None = None
    # A hub source's commit; None for other sources.
    base_model_revision: str | None = None
    forget_dataset: uuid.UUID
    retain_datasets: list[uuid.UUID]
    heldout_fraction: float = Field(gt=0, lt=1)
    finetune: FinetuneSpec | None
    method: MethodChoice
    probe: bool
    general_text_perplexity: bool
    seed: int = Field(ge=0)
    # An audit to run on the adapter as soon as the job succeeds.
    audit: AuditSpec | None = None
    # A stacked request: the tenant's earlier adapter (same base model, LoRA rank, alpha and layers) whose weights
    # the job's LoRA starts from; the new adapter records it as its parent.
    parent_adapter: uuid.UUID | None = None
