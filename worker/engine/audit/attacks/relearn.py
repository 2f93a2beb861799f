"""Relearning: how fast a few examples bring the forgotten task back.

Hu et al. ("Jogging the memory of unlearned LLMs through targeted relearning attacks", arXiv 2406.13356) and
Lynch et al. ("Eight methods to evaluate robust unlearning in LLMs", arXiv 2402.16835) fine-tune an unlearned
LM on a small part of the forget set and find that it answers the rest again. Here, for each k in
`params.examples`, the forgotten adapter is fine-tuned (plain NLL on the true targets, AdamW) on k forget-train
rows for `params.steps` steps, and forget-heldout — rows it never trains on — is scored every
`params.evaluate_every` steps and at the last step. The benign variant (Hu et al.'s "public information"
threat model) fine-tunes on retain rows only, never on the forget set.

Choices where the papers leave room:
- Only the LoRA weights are trained, starting from the forgotten ones: the adapter is what the service hands out,
  and an attacker holding it can fine-tune it. Every LoRA parameter is trained, whichever the forget method
  trained; the requires_grad flags are put back afterwards.
- k larger than forget-train is clipped to its size, and sizes equal after clipping are run once. The k rows are
  a seeded sample (seed = the audit's seed and k), so a larger k is not a superset of a smaller one.
- Batches hold min(k, the forget job's batch size) rows: a small k relearns on all k rows at every step. There
  are as many epochs as steps, so every run takes exactly `params.steps` steps.
- The benign variant trains on as many retain rows (every retain set pooled, seeded sample) as the largest k,
  for the same steps; without retain rows it is skipped, not an error (the audit still reports the k curves).
- Each curve starts at (0, the forgotten LM's score) and ends at the last step; a variant's `after_attack` is its
  curve's last point, with each heldout row's score there (judge() resamples the rows).

Never-learned control (where the forget job fine-tuned first, `ctx.control`): relearning teaches any LM that can
learn the task from k rows, so every variant is run again, same rows, steps and seed, from the control adapter (the
base LM, which never saw the task: `before` with B = 0 and the forgotten adapter's shape). Its heldout score before
(`control_before`, the base LM) and after (`control_after`, its curve's last point) give control_recovery, in the
units of recovery; the verdict reads the excess. Its curve is `control <variant>`. Starting from B = 0 with the
before-forgetting adapter's A matrices is how LoRA itself starts (A set, B zero), so the control trains the same
number of parameters as the attacker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from lethe.attacks import AttackParams, RelearnParams
from lethe.rows import Row
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackOutcome, RowScores, Variant
from worker.engine.lm.lora import LoraState, all_lora_trainable
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective

SPLIT = "forget_heldout"
BENIGN = "benign"


def relearn(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """Recovery curves of forget-heldout while fine-tuning the forgotten adapter on k forget-train rows."""
    if not isinstance(params, RelearnParams):
        raise TypeError(f"relearn takes RelearnParams, got {type(params).__name__}")
    heldout = ctx.forget_heldout
    sizes = sorted({min(k, len(ctx.forget_train)) for k in params.examples})
    runs = {f"k={k}": _sample(ctx.forget_train, k, f"{ctx.seed}/relearn/{k}") for k in sizes}
    retain = ctx.retain_rows()
    if params.benign and retain:
        runs[BENIGN] = _sample(retain, max(sizes), f"{ctx.seed}/relearn/{BENIGN}")

    before = ctx.reference_score(heldout, "before")
    after_forgetting = ctx.reference_score(heldout, "forgotten")
    control = ctx.control
    total_steps = params.steps * len(runs) * (1 if control is None else 2)
    steps_done = 0

    def on_step(_rows: int) -> None:
        nonlocal steps_done
        steps_done += 1
        ctx.on_progress(steps_done / total_steps)

    curves = {
        name: _relearn_curve(ctx, ctx.forgotten, rows, params, after_forgetting, on_step) for name, rows in runs.items()
    }
    variants = [Variant(name, after_attack=curve[-1][1]) for name, curve in curves.items()]
    if control is not None:
        control_before = ctx.reference_score(heldout, "control")
        for variant in variants:
            curve = _relearn_curve(ctx, control, runs[variant.name], params, control_before, on_step)
            curves[f"control {variant.name}"] = curve
            variant.control_before, variant.control_after = control_before, curve[-1][1]
    ctx.on_progress(1.0)
    return AttackOutcome(
        metric=ctx.metric,
        split=SPLIT,
        before=before,
        after_forgetting=after_forgetting,
        variants=variants,
        curves=curves,
        chance=ctx.chance(heldout),
    )


def _relearn_curve(
    ctx: AuditContext,
    start: LoraState,
    rows: Sequence[Row],
    params: RelearnParams,
    start_score: RowScores,
    on_step: Callable[[int], None],
) -> list[tuple[int, float]]:
    """(step, forget-heldout score) while fine-tuning the adapter from `start` on `rows`, from (0, start_score)."""
    # Every point is a RowScores (ctx.score's), so a variant's last point keeps its rows for judge().
    curve: list[tuple[int, float]] = [(0, start_score)]

    def record(step: int) -> None:
        curve.append((step, ctx.score(ctx.forget_heldout)))

    # Every curve from the same generator state: the attack's and the control's runs differ only in where they start.
    torch.manual_seed(ctx.seed)
    with ctx.using(start) as peft_lm, all_lora_trainable(peft_lm):
        # train() evaluates at max_steps whatever evaluate_every is, and there are enough epochs to get there:
        # the curve ends at the last step.
        train(
            peft_lm,
            ctx.tokenizer,
            Objective(),
            rows,
            [],
            Schedule(
                learning_rate=params.learning_rate,
                epochs=params.steps,
                batch_size=min(len(rows), ctx.train_batch_size or ctx.batch_size),
                max_steps=params.steps,
                evaluate_every=params.evaluate_every,
            ),
            seed=ctx.seed,
            limit=ctx.limit,
            evaluate=record,
            on_step=on_step,
        )
    return curve


def _sample(rows: Sequence[Row], k: int, seed: str) -> list[Row]:
    """k of `rows` (all of them if there are fewer), a seeded sample in the rows' order."""
    k = min(k, len(rows))
    chosen = set(random.Random(seed).sample(range(len(rows)), k))
    return [row for i, row in enumerate(rows) if i in chosen]
