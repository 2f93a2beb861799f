"""Shared by the relearn, in_context, paraphrase and trigger tests: forgetting built to be shallow in a known way."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch

from lethe.rows import ChoiceRow, Row
from tests.engine.audit.conftest import LIMIT, context_for, training_only
from worker.engine.audit.context import AuditContext
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora, lora_state
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective


def wrong(row: ChoiceRow) -> ChoiceRow:
    """The row with the next choice as its answer: a wrong one."""
    return dataclasses.replace(row, answer=(row.answer + 1) % len(row.choices))


def finetuned_context(
    base: LoadedLM,
    rows: dict[str, list[Row]],
    trained: Sequence[Row],
    steps: int = 30,
    learning_rate: float = 1e-2,
    modules: Sequence[str] | None = None,
) -> AuditContext:
    """The audit context of a fresh adapter on `base` fine-tuned (NLL of the targets, batches of 16) on `trained`.

    This is forgetting built to be shallow in a known way: the methods' forgetting on the tiny LM generalises all
    or nothing (it learns "never answer fruit"), so a test that needs knowledge to survive in another prompt
    format trains forget-train's own prompts to `wrong` answers and rows in that format to their right ones.
    `rows` holds forget_train, forget_heldout and retain as for `build_context`; `modules` as `forget_modules`
    there (only the adapter parameters matching one of them are fine-tuned).
    """
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(base.lm), rank=4, alpha=8)
    before = lora_state(peft_lm)
    with training_only(peft_lm, modules):
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
    return context_for(base, peft_lm, before, rows)
