"""The attack tests' premise: the taught LM knows the task, the forgotten adapter has forgotten it."""

from __future__ import annotations

import dataclasses

import torch

from worker.engine.audit.context import AuditContext
from worker.engine.lm.lora import lora_state


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


def test_reference_scores_are_computed_once_and_match_a_direct_pass(forgotten_context: AuditContext) -> None:
    ctx = dataclasses.replace(forgotten_context)  # a fresh cache
    calls: list[int] = []
    hook = ctx.peft_lm.register_forward_pre_hook(lambda _module, _args: calls.append(1))
    try:
        before = ctx.reference_score(ctx.forget_train, "before")
        after = ctx.reference_score(ctx.forget_train, "forgotten")
        passes = len(calls)
        assert passes > 0
        assert ctx.reference_score(ctx.forget_train, "before") == before
        assert ctx.reference_score(list(ctx.forget_train), "forgotten") == after
        assert len(calls) == passes  # served from the cache
    finally:
        hook.remove()
    with ctx.before_lm():
        assert ctx.score(ctx.forget_train) == before
    assert ctx.score(ctx.forget_train) == after and before != after


def test_scores_keep_each_row_s_part(forgotten_context: AuditContext) -> None:
    ctx = forgotten_context
    scores = ctx.score(ctx.forget_heldout)
    # Choice rows: 1.0 / 0.0 per row (answered right / wrong), the score their mean.
    assert len(scores.rows) == len(ctx.forget_heldout) and set(scores.rows) <= {0.0, 1.0}
    assert float(scores) == sum(scores.rows) / len(scores.rows)
