"""Probe depth: can a linear probe on the forgotten LM's hidden states still solve the task its answers forgot?

The seed paper ("Unforgettable generalization in language models", arXiv 2409.02228) fits linear probes on the
hidden states of LMs fine-tuned to forget a task and finds that they often still solve it: the forgetting is
shallow. Here, as in the forget run's probes (`worker.engine.metrics.probes`), each layer gets a logistic
regression on the last-token states of (prompt, choice) pairs, fitted on forget-train and scored on forget-heldout,
once on the LM before forgetting and once on the forgotten LM (four scoring passes: two LMs × two splits).

Outcome (metric `probe_accuracy`, split forget_heldout): `before` / `after_forgetting` are the LM's own heldout
accuracy before / after forgetting (for qa rows: how often it scores the true answer above the perturbed ones),
from the same scoring passes; one variant per decoder block whose `after_attack` is the probe after forgetting at
that block. Recovery is then the share of what forgetting took from the LM's answers that a probe on its states
still finds.

qa rows are probed as the forget run probes them (`qa_probe_rows`): the true answer against the perturbed answers;
rows without perturbed answers are left out, and a split with none left makes the attack not applicable.

Choices:
- Variant `layer_<i>` (layer=i) probes the output of decoder block i, as patch and restore number blocks; the forget
  run numbers the embeddings 0, so its probe layer i + 1 is this attack's layer i. The last block's state is
  transformers' last hidden state, with the final norm applied. The embeddings get no variant: forgetting cannot
  change them (the adapter sits in the blocks), so their probe would count as recovered whenever the pairs' last
  token alone gives the answer away (a bias of the data, not knowledge of the LM).
- A variant's `before` is the probe's accuracy before forgetting; after_forgetting is the LM's own heldout accuracy
  after forgetting (the outcome's), which judge() counts from chance at the lowest: an LM forgotten below chance
  (gradient ascent flips binary answers) would otherwise count a probe at chance, which found nothing, as recovery.
- A probe is fitted on the task, so it may beat the LM (on an LM that never learned the task, a probe fitted on 200
  rows reached 0.71 where the LM was at chance). judge() gives no rate when the LM's own accuracy did not drop by
  min_forgetting, so an LM that forgot nothing shows no recovery.

Never-learned control (where the forget job fine-tuned first): the same probes (fitted on the same forget-train
rows) on the base LM, which never saw the task. The attack on it goes from its own heldout accuracy
(`control_before`) to its block's probe (`control_after`): what a probe fitted on the task finds in any LM's states.
control_recovery puts that gain in the units of recovery; the verdict reads the excess over it. Six scoring passes
with a control (three LMs × two splits), four without.

Intervals. Every number here is a proportion of heldout rows (the LM's own answers, a block's probe), so each alone
would have a Wilson interval; recovery combines three of them on the same heldout rows (five with the control), so
it is bootstrapped over those rows jointly (paired), every row's 0/1 correctness under each LM and probe resampled
together. Unpaired intervals would ignore that the same rows are easy or hard for every probe and overstate the
width. The probes are held fixed (fitted once on forget-train): the interval is conditional on them, and does not
include the variation of refitting on other training rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from lethe.attacks import AttackParams, ProbeParams
from lethe.rows import ChoiceRow, QARow, Row, chance
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, AttackOutcome, RowScores, Variant
from worker.engine.lm.load import CausalLM
from worker.engine.metrics.choice_scores import ChoiceScores, score_choices
from worker.engine.metrics.probes import probe_correct_by_layer, qa_probe_rows

SPLIT = "forget_heldout"


def probe_rows(rows: Sequence[Row]) -> list[ChoiceRow]:
    """The choice rows a probe scores: choice rows as they are, qa rows as true-vs-perturbed answers."""
    choice_rows = [row for row in rows if isinstance(row, ChoiceRow)]
    return choice_rows + qa_probe_rows([row for row in rows if isinstance(row, QARow)])


def probe(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """Per-block probe accuracy on forget-heldout before and after forgetting, against the LM's own accuracy."""
    if not isinstance(params, ProbeParams):
        raise TypeError(f"probe takes ProbeParams, got {type(params).__name__}")
    if ctx.kind not in ("choice", "qa"):
        raise ValueError(f"the probe attack needs choice or qa rows, not {ctx.kind}")
    train_rows, heldout_rows = probe_rows(ctx.forget_train), probe_rows(ctx.forget_heldout)
    if not train_rows or not heldout_rows:
        raise AttackNotApplicable(
            "the probe attack needs qa rows with perturbed answers in both forget_train and forget_heldout"
        )

    # Progress in units of one scored pair; one LM's probes cost about half a scoring pass of both splits (as the
    # forget run estimates them).
    pairs = sum(len(row.choices) for row in [*train_rows, *heldout_rows])
    total = (2 if ctx.control is None else 3) * (pairs + 0.5 * pairs)
    done = 0.0

    def advance(units: float) -> None:
        nonlocal done
        done += units
        ctx.on_progress(min(done / total, 1.0))

    def probed(lm: CausalLM, reference: Literal["before", "forgotten", "control"]) -> tuple[RowScores, list[RowScores]]:
        """The LM's own heldout correctness and its probes' per block, row by row (hidden states then freed)."""
        train = score_choices(
            lm, ctx.tokenizer, train_rows, ctx.batch_size, collect_hidden=True, on_pairs_scored=advance
        )
        heldout = score_choices(
            lm, ctx.tokenizer, heldout_rows, ctx.batch_size, collect_hidden=True, on_pairs_scored=advance
        )
        if ctx.kind == "choice":
            # The splits' rows as they are, scored as `ctx.score` scores them (the hidden states change nothing in
            # the forward pass): the other attacks' reference scores, which they need not compute again.
            ctx.keep_reference_score(ctx.forget_train, reference, RowScores([float(c) for c in train.correct]))
            ctx.keep_reference_score(ctx.forget_heldout, reference, RowScores([float(c) for c in heldout.correct]))
        per_layer = 0.5 * pairs / ctx.num_layers
        correct = probe_correct_by_layer(_blocks_only(train), _blocks_only(heldout), lambda: advance(per_layer))
        return RowScores(heldout.correct), [RowScores(layer.tolist()) for layer in correct]

    with ctx.before_lm() as before_lm:
        before, probes_before = probed(before_lm, "before")
    after, probes_after = probed(ctx.peft_lm, "forgotten")
    variants = [
        Variant(f"layer_{block}", after_attack=probe_after, before=probe_before, layer=block)
        for block, (probe_before, probe_after) in enumerate(zip(probes_before, probes_after, strict=True))
    ]
    if ctx.control is not None:
        with ctx.control_lm() as control_lm:
            control_own, control_probes = probed(control_lm, "control")
        for variant, control_probe in zip(variants, control_probes, strict=True):
            variant.control_before, variant.control_after = control_own, control_probe
    ctx.on_progress(1.0)
    return AttackOutcome(
        metric="probe_accuracy",
        split=SPLIT,
        before=before,
        after_forgetting=after,
        chance=chance(heldout_rows),
        variants=variants,
    )


def _blocks_only(scores: ChoiceScores) -> ChoiceScores:
    """`scores` without the embeddings' states: hidden[:, i] is then the output of decoder block i (a view)."""
    assert scores.hidden is not None  # scored with collect_hidden=True
    return dataclasses.replace(scores, hidden=scores.hidden[:, 1:])
