"""Run an attack and check what every attack owes its caller."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
from transformers import PreTrainedModel

from lethe.attacks import ATTACKS, AttackParams
from worker.engine.audit.attacks.implementations import attack_implementation, diagnostic_implementation
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import DiagnosticOutcome
from worker.engine.audit.outcome import AttackOutcome
from worker.engine.lm.blocks import decoder_blocks
from worker.engine.lm.lora import lora_state


def _live_lms() -> int:
    return sum(issubclass(type(o), PreTrainedModel) for o in gc.get_objects())


OutcomeT = TypeVar("OutcomeT", AttackOutcome, DiagnosticOutcome)


def run_checked(
    attack: Callable[[AuditContext, AttackParams], OutcomeT], ctx: AuditContext, params: AttackParams
) -> tuple[OutcomeT, list[float]]:
    """The attack's outcome and the progress it reported, after checking what every attack owes its caller:
    progress within [0, 1], never going back, ending at 1; the forgotten adapter back in peft_lm, in eval mode,
    with the LoRA requires_grad flags it found and without our hooks; the base LM unchanged; no copy of the LM
    kept alive."""
    base_weights = {key: value.clone() for key, value in ctx.base.lm.state_dict().items()}
    flags = {name: p.requires_grad for name, p in ctx.peft_lm.named_parameters() if "lora_" in name}
    lms = _live_lms()
    progress: list[float] = []
    outcome = attack(dataclasses.replace(ctx, on_progress=progress.append), params)
    assert progress and progress == sorted(progress)
    assert progress[0] >= 0 and progress[-1] == pytest.approx(1.0) and progress[-1] <= 1
    adapter = lora_state(ctx.peft_lm)
    assert all(torch.equal(adapter[key], value) for key, value in ctx.forgotten.items())
    assert not ctx.peft_lm.training
    assert flags == {name: p.requires_grad for name, p in ctx.peft_lm.named_parameters() if "lora_" in name}
    # transformers installs hooks of its own (to capture hidden states); ours must be gone.
    hooks = [hook for block in decoder_blocks(ctx.peft_lm) for hook in block._forward_hooks.values()]
    assert not any(hook.__module__.startswith("worker.") for hook in hooks)
    assert all(torch.equal(value, base_weights[key]) for key, value in ctx.base.lm.state_dict().items())
    assert _live_lms() <= lms
    return outcome, progress


def run_attack(name: str, ctx: AuditContext, **params: Any) -> AttackOutcome:
    """Attack `name` with `params` on `ctx`, through run_checked."""
    return run_checked(attack_implementation(name), ctx, ATTACKS.get(name).parse(params))[0]


def run_diagnostic(name: str, ctx: AuditContext, **params: Any) -> DiagnosticOutcome:
    """Diagnostic `name` (restore, patch) with `params` on `ctx`, through run_checked."""
    return run_checked(diagnostic_implementation(name), ctx, ATTACKS.get(name).parse(params))[0]
