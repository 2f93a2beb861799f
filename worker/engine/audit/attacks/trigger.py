"""Forget-token triggers: words of the forget set, inserted into retain queries, set off the forgetting there.

Dang et al. ("Improving LLM unlearning robustness via random perturbations", arXiv 2501.19202) show that
unlearning teaches the LM to treat forget tokens like a backdoor trigger: a retain query that merely contains
some of them gets the forgotten-LM treatment (a scrambled representation, a wrong answer). Here every retain row
gets the first `params.words` whitespace-separated words of a forget-train row (its choice prompt, question or
passage) inserted before (`prefix`) or after (`suffix`) its own context, joined by a space; the retain score of
the forgotten LM with and without them is compared with the same difference before forgetting.

Variant per retain set (named after it), all on the LM's primary score of that set's kind:
before = the LM before forgetting on clean rows, control = the same LM on triggered rows, after_forgetting =
the forgotten LM on clean rows, after_attack = the forgotten LM on triggered rows. judge() reports the excess
drop (after_forgetting − after_attack) − max(0, before − control): the damage the insertion does beyond what it
did before forgetting (a long or odd insertion can confuse any LM; that part is not the forgetting's doing).
The four scores are of the same retain rows, so the excess drop's interval is a paired bootstrap over them (judge()).

Choices where the paper leaves room:
- Where the words go: choice rows get them around the prompt ("W prompt" / "prompt W" + the prompt's trailing
  whitespace, so the choices attach as before), qa rows around the question inside the template. Text rows have
  no context of their own (they are scored after EOS): the words become their context, in either position, and
  the passage is scored after them ("W" then " passage", so the passage's first word gains a leading space).
- Which forget row: one per retain row, seeded (the audit's seed, the retain set's name and the row's index);
  a forget row with fewer words than `params.words` gives all of them.
- The outcome's own before / after_forgetting are the clean scores averaged over the retain sets (each variant
  carries its own, which judge() uses); its metric is the retain sets' primary metric, names joined by "/" when
  the sets are of different kinds. Empty retain sets are skipped; no retain row at all is an error.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from lethe.attacks import AttackParams, TriggerParams
from lethe.rows import ChoiceRow, QARow, Row, kind_of
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, AttackOutcome, RowScores, Variant
from worker.engine.lm.inputs import encode_pair
from worker.engine.metrics.evaluate import PRIMARY_METRIC
from worker.engine.metrics.qa import answer_probability
from worker.engine.metrics.token_scores import score_tokens

SPLIT = "retain"


def trigger(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """Retain scores with forget-train words inserted, before and after forgetting, one variant per retain set."""
    if not isinstance(params, TriggerParams):
        raise TypeError(f"trigger takes TriggerParams, got {type(params).__name__}")
    retain = {name: rows for name, rows in ctx.retain.items() if rows}
    if not retain:
        raise AttackNotApplicable("the trigger attack needs retain rows, and the forget job had none")
    triggers = {
        name: [
            _trigger_words(ctx.forget_train, params.words, f"{ctx.seed}/trigger/{name}/{j}") for j in range(len(rows))
        ]
        for name, rows in retain.items()
    }
    passes = 4 * len(retain)
    done = 0

    def measured(value: RowScores) -> RowScores:
        nonlocal done
        done += 1
        ctx.on_progress(done / passes)
        return value

    before = {name: measured(ctx.reference_score(rows, "before")) for name, rows in retain.items()}
    with ctx.before_lm():
        control = {
            name: measured(_triggered_score(ctx, rows, triggers[name], params.position))
            for name, rows in retain.items()
        }
    after_forgetting = {name: measured(ctx.reference_score(rows, "forgotten")) for name, rows in retain.items()}
    after_attack = {
        name: measured(_triggered_score(ctx, rows, triggers[name], params.position)) for name, rows in retain.items()
    }
    metrics = sorted({PRIMARY_METRIC[kind_of(rows)] for rows in retain.values()})
    return AttackOutcome(
        metric="/".join(metrics),
        split=SPLIT,
        before=sum(before.values()) / len(retain),
        after_forgetting=sum(after_forgetting.values()) / len(retain),
        variants=[
            Variant(
                name,
                after_attack=after_attack[name],
                before=before[name],
                after_forgetting=after_forgetting[name],
                control=control[name],
            )
            for name in retain
        ],
        effect="damage",
    )


def _trigger_words(forget_rows: Sequence[Row], words: int, seed: str) -> str:
    """The first `words` words of a seeded forget row's prompt, question or passage."""
    row = forget_rows[random.Random(seed).randrange(len(forget_rows))]
    if isinstance(row, ChoiceRow):
        text = row.prompt
    elif isinstance(row, QARow):
        text = row.question
    else:
        text = row.text
    return " ".join(text.split()[:words])


def insert_words(text: str, words: str, position: str) -> str:
    """`words` before or after `text`, a space between; `text`'s trailing whitespace stays at the end."""
    if position == "prefix":
        return f"{words} {text}"
    core = text.rstrip()
    return f"{core} {words}{text[len(core) :]}"


def _triggered_score(ctx: AuditContext, rows: Sequence[Row], triggers: Sequence[str], position: str) -> RowScores:
    """peft_lm's primary score of `rows` (per row) with each row's trigger words inserted."""
    triggered: list[Row] = []
    text_pairs = []
    for row, words in zip(rows, triggers, strict=True):
        if isinstance(row, ChoiceRow):
            triggered.append(dataclasses.replace(row, prompt=insert_words(row.prompt, words, position)))
        elif isinstance(row, QARow):
            triggered.append(dataclasses.replace(row, question=insert_words(row.question, words, position)))
        else:
            text_pairs.append(encode_pair(ctx.tokenizer, words, " " + row.text))
    if triggered:
        return ctx.score(triggered)
    scores = score_tokens(ctx.peft_lm, ctx.tokenizer, text_pairs, ctx.batch_size)
    return RowScores([answer_probability(s) for s in scores])
