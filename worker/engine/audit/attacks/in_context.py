"""In-context relearning: forget-train examples with their true answers, put in the prompt, bring the task back.

Pawelczyk et al. ("In-context unlearning: language models as few-shot unlearners", arXiv 2310.07579) steer an
LM with labelled examples in its context instead of its weights; Lynch et al. (arXiv 2402.16835) and Hu et al.
(arXiv 2406.13356) list in-context relearning among the ways forgotten knowledge resurfaces. Here, for each k in
`params.shots`, every forget-heldout row is asked after k forget-train rows shown with their true answers, and the
forgotten LM's score on those prompts is compared with the pre-forgetting LM's on the same prompts.

A prompt is the shots, each its row's context followed by its true target (a choice row's prompt and right
choice; a qa row's "Question: …\\nAnswer: …"), then the heldout row's own context, all joined by a blank line.
Choice rows are scored as choice rows with that longer prompt (accuracy); qa rows by the length-normalized
probability of their answer after it (answer_probability, as `AuditContext.score` scores qa rows).

Choices where the papers leave room:
- The k shots of each heldout row are a seeded sample of forget-train (seed = the audit's seed, k and the row's
  index), in forget-train's order; different rows see different shots. k larger than forget-train is clipped to
  its size, and sizes equal after clipping are run once.
- The row's own prompt and its longest target always fit `ctx.limit` tokens: shots are dropped, farthest from the
  question first, until the whole prompt fits (a prompt that does not fit even alone is scored with no shots, as
  zero-shot scoring would left-truncate it). A variant named k=8 may therefore hold fewer shots on long rows.
- A variant's `before` is the LM before forgetting given the same prompts (the same shots): shots also help an LM
  that never forgot, so the attack is measured against what they do for the LM it forgot from, not against its
  zero-shot score. `after_forgetting` is the forgotten LM's zero-shot score: the attack asks how much of what
  forgetting removed the shots give back, recovery = (after_attack − floor) / (before with shots − floor). The
  outcome's own `before` is the zero-shot one (what forgetting removed, which judge() checks against
  min_forgetting).
- Never-learned control (where the forget job fine-tuned first): the base LM, which never saw the task, zero-shot
  (`control_before`) and given the same prompts (`control_after`): the share of the forgetting that the shots
  alone would teach. The verdict reads the excess over it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from lethe.attacks import AttackParams, InContextParams
from lethe.rows import ChoiceRow, QARow, Row
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackOutcome, RowScores, Variant
from worker.engine.lm.inputs import encode_pair
from worker.engine.metrics.qa import answer_probability
from worker.engine.metrics.token_scores import score_tokens

SPLIT = "forget_heldout"
SEPARATOR = "\n\n"


def in_context(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """Forget-heldout scores of the forgotten LM with k forget-train examples (true answers) before each prompt."""
    if not isinstance(params, InContextParams):
        raise TypeError(f"in_context takes InContextParams, got {type(params).__name__}")
    if ctx.kind not in ("choice", "qa"):
        raise ValueError(f"in_context applies to choice and qa forget sets, not {ctx.kind}")
    heldout = ctx.forget_heldout
    sizes = sorted({min(k, len(ctx.forget_train)) for k in params.shots})
    # Passes: before and forgotten zero-shot, then per k the forgotten and the before LM with shots; with a control
    # its zero-shot pass and one per k.
    controlled = ctx.control is not None
    units = 2 + 2 * len(sizes) + (1 + len(sizes) if controlled else 0)
    done = 0

    def scored(value: RowScores) -> RowScores:
        nonlocal done
        done += 1
        ctx.on_progress(done / units)
        return value

    before = scored(ctx.reference_score(heldout, "before"))
    after_forgetting = scored(ctx.reference_score(heldout, "forgotten"))
    control_before = scored(ctx.reference_score(heldout, "control")) if controlled else None
    variants = []
    for k in sizes:
        prompts = [
            few_shot_prompt(
                ctx.tokenizer, _shots(ctx.forget_train, k, f"{ctx.seed}/in_context/{k}/{j}"), row, ctx.limit
            )
            for j, row in enumerate(heldout)
        ]
        variant = Variant(f"k={k}", after_attack=scored(_score_after(ctx, heldout, prompts)))
        with ctx.before_lm():
            variant.before = scored(_score_after(ctx, heldout, prompts))
        if controlled:
            with ctx.control_lm():
                variant.control_before, variant.control_after = (
                    control_before,
                    scored(_score_after(ctx, heldout, prompts)),
                )
        variants.append(variant)
    return ctx.outcome(SPLIT, heldout, before, after_forgetting, variants)


def _shots(rows: Sequence[Row], k: int, seed: str) -> list[str]:
    """k of `rows` (a seeded sample, in their order), each as its context followed by its true target."""
    chosen = sorted(random.Random(seed).sample(range(len(rows)), k))
    return [rows[i].context + rows[i].target for i in chosen]


def few_shot_prompt(tokenizer: PreTrainedTokenizerBase, shots: Sequence[str], row: Row, limit: int) -> str:
    """The shots and the row's context, dropping the shots farthest from it until every target fits `limit`."""
    targets = row.choices if isinstance(row, ChoiceRow) else (row.target,)

    def length(prompt: str) -> int:
        """Tokens of the prompt followed by its longest target."""
        pairs = [encode_pair(tokenizer, prompt, target) for target in targets]
        return max(len(context_ids) + len(target_ids) for context_ids, target_ids in pairs)

    # Count each shot's tokens once and drop from the front by those counts, then check the real encoding
    # (tokens can merge across the separators): one or two encodings per row instead of one per dropped shot.
    shot_lengths = [len(tokenizer.encode(shot + SEPARATOR, add_special_tokens=False)) for shot in shots]
    room = limit - length(row.context)
    first = 0
    while first < len(shots) and sum(shot_lengths[first:]) > room:
        first += 1
    kept = list(shots[first:])
    prompt = SEPARATOR.join([*kept, row.context])
    while kept and length(prompt) > limit:
        kept.pop(0)
        prompt = SEPARATOR.join([*kept, row.context])
    return prompt


def _score_after(ctx: AuditContext, rows: Sequence[Row], prompts: Sequence[str]) -> RowScores:
    """peft_lm's primary score of `rows` (per row), each asked with its prompt in place of its own context."""
    if ctx.kind == "choice":
        return ctx.score(
            [
                ChoiceRow(prompt=prompt, choices=row.choices, answer=row.answer)
                for row, prompt in zip(rows, prompts, strict=True)
                if isinstance(row, ChoiceRow)
            ]
        )
    # A QARow's context is always its question in QA_TEMPLATE, so qa rows are scored here, as ctx.score does.
    pairs = [
        encode_pair(ctx.tokenizer, prompt, row.target)
        for row, prompt in zip(rows, prompts, strict=True)
        if isinstance(row, QARow)
    ]
    scores = score_tokens(ctx.peft_lm, ctx.tokenizer, pairs, ctx.batch_size)
    return RowScores([answer_probability(s) for s in scores])
