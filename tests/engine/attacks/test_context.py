"""The attack tests' premise: the taught LM knows the task, the forgotten adapter has forgotten it."""

from __future__ import annotations

import torch

from worker.engine.attacks.context import AuditContext, lora_state


def test_forgetting_removed_the_task_and_before_is_the_taught_lm(forgotten_context: AuditContext) -> None:
    ctx = forgotten_context
    with ctx.before_lm():
        before = ctx.score(ctx.forget_train)
    after = ctx.score(ctx.forget_train)
    print(before, after, ctx.score(ctx.forget_heldout), ctx.score(ctx.retain_rows()))
    assert before == 1.0
    assert after <= 0.5


def test_using_puts_the_forgotten_weights_back_even_on_error(forgotten_context: AuditContext) -> None:
    ctx = forgotten_context
    try:
        with ctx.using(ctx.before) as lm:
            assert all(torch.equal(p, ctx.before[n]) for n, p in lm.named_parameters() if "lora_" in n)
            raise RuntimeError("an attack failed")
    except RuntimeError:
        pass
    now = lora_state(ctx.peft_lm)
    assert all(torch.equal(now[name], value) for name, value in ctx.forgotten.items())
