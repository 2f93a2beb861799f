"""Shared by the relearn, in_context, paraphrase and trigger tests: an attack run that checks what every attack
must leave as it found it, and forgetting built to be shallow in a known way."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch

from tests.engine.attacks.conftest import LIMIT
from worker.engine.attacks.context import AuditContext, lora_state
from worker.engine.attacks.outcome import AttackOutcome
from worker.engine.attacks.params import AttackParams
from worker.engine.data import ChoiceRow, Row
from worker.engine.lm import LoadedLM
from worker.engine.training import Objective, Schedule, attach_lora, train


def run_checked(
    attack: Callable[[AuditContext, AttackParams], AttackOutcome], ctx: AuditContext, params: AttackParams
) -> tuple[AttackOutcome, list[float]]:
    """The attack's outcome and the progress it reported, after checking that it left peft_lm with the forgotten
    weights, in eval mode, with the LoRA requires_grad flags it found, the base LM untouched, and that its
    progress only went up, to 1."""
    progress: list[float] = []
    flags = {name: p.requires_grad for name, p in ctx.peft_lm.named_parameters() if "lora_" in name}
    base_weights = {name: p.detach().clone() for name, p in ctx.base.lm.named_parameters() if "lora_" not in name}
    outcome = attack(dataclasses.replace(ctx, on_progress=progress.append), params)
    now = lora_state(ctx.peft_lm)
    assert all(torch.equal(now[name], value) for name, value in ctx.forgotten.items())
    assert not ctx.peft_lm.training
    assert flags == {name: p.requires_grad for name, p in ctx.peft_lm.named_parameters() if "lora_" in name}
    assert all(torch.equal(p, base_weights[name]) for name, p in ctx.base.lm.named_parameters() if name in base_weights)
    assert progress == sorted(progress)
    assert progress[0] >= 0 and progress[-1] == 1.0
    return outcome, progress


def wrong(row: ChoiceRow) -> ChoiceRow:
    """The row with the next choice as its answer: a wrong one."""
    return dataclasses.replace(row, answer=(row.answer + 1) % len(row.choices))


def finetuned_context(
    base: LoadedLM, rows: dict[str, list[Row]], trained: Sequence[Row], steps: int = 30, learning_rate: float = 1e-2
) -> AuditContext:
    """The audit context of a fresh adapter on `base` fine-tuned (NLL of the targets, batches of 16) on `trained`.

    This is forgetting built to be shallow in a known way: the methods' forgetting on the tiny LM generalises all
    or nothing (it learns "never answer fruit"), so a test that needs knowledge to survive in another prompt
    format trains forget-train's own prompts to `wrong` answers and rows in that format to their right ones.
    `rows` holds forget_train, forget_heldout and retain as for `build_context`.
    """
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(base.lm), rank=4, alpha=8)
    before = lora_state(peft_lm)
    train(
        peft_lm,
        base.tokenizer,
        Objective(),
        trained,
        [],
        Schedule(learning_rate=learning_rate, epochs=steps, batch_size=16, max_steps=steps),
        seed=0,
        limit=LIMIT,
    )
    return AuditContext(
        base=base,
        peft_lm=peft_lm,
        forgotten=lora_state(peft_lm),
        before=before,
        forget_train=rows["forget_train"],
        forget_heldout=rows["forget_heldout"],
        retain={"tool": rows["retain"]},
        batch_size=8,
        seed=0,
        limit=LIMIT,
    )
