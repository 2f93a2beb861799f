"""What every attack works on: the forgotten LM (base + adapter), its LoRA weights before and after forgetting,
the forget job's splits, and the scoring shared by all attacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft import PeftModel

from lethe.rows import ChoiceRow, Row, chance, kind_of
from worker.engine.audit.diagnostics import KnowledgeRecovery, answer_logits, each_answer_logits
from worker.engine.audit.outcome import AttackOutcome, RowScores, Variant
from worker.engine.audit.replay import captured
from worker.engine.lm.architecture import describe
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.lm.lora import LoraState, load_lora_state
from worker.engine.metrics.evaluate import PRIMARY_METRIC, primary_row_scores


@dataclass
class DiagnosticBaseline:
    """What the diagnostics (restore, patch) measure a split against: the KRS of the forgotten LM's answer logits
    against the pre-forgetting LM's (`recovery`), and the forgotten pass's outputs of some blocks, by block (what a
    variant's pass that starts above the block replays: audit/replay.py)."""

    recovery: KnowledgeRecovery
    block_outputs: dict[int, list[torch.Tensor]]


@dataclass
class AuditContext:
    """The forgotten LM and what it is measured on.

    `peft_lm` holds the forgotten adapter between attacks: an attack that changes its weights does so inside
    `using(...)`, which puts the forgotten weights back on exit. `before` is the adapter right before forgetting
    (after the optional fine-tune; with no fine-tune its LoRA B matrices are zero: the base LM). `control` is the
    never-learned control where the forget job fine-tuned first: `before` with every LoRA B zeroed, i.e. the base
    LM exactly (B·A = 0), which never saw the task's rows, with the adapter's A matrices for an attack that trains
    it (as LoRA starts, A set and B zero); None without a fine-tune, where the LM before forgetting is the base LM
    and nothing in the audit never learned what it knew.
    """

    base: LoadedLM
    peft_lm: PeftModel
    forgotten: LoraState
    before: LoraState
    forget_train: Sequence[Row]
    forget_heldout: Sequence[Row]
    retain: Mapping[str, Sequence[Row]]
    # Rows per scoring batch; relearning trains in batches of train_batch_size (None = batch_size) rows.
    batch_size: int
    seed: int
    limit: int
    on_progress: Callable[[float], None] = field(default=lambda _fraction: None)
    train_batch_size: int | None = None
    control: LoraState | None = None
    _reference_scores: dict[tuple[str, tuple[Row, ...]], RowScores] = field(
        default_factory=dict, init=False, repr=False
    )
    _baselines: dict[tuple[Row, ...], DiagnosticBaseline] = field(default_factory=dict, init=False, repr=False)

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]  # PreTrainedTokenizerBase; kept loose for the hooks
        return self.base.tokenizer

    @property
    def kind(self) -> str:
        """The forget set's kind: choice, qa or text."""
        return kind_of([*self.forget_train, *self.forget_heldout])

    @property
    def num_layers(self) -> int:
        return int(self.peft_lm.config.num_hidden_layers)

    @property
    def metric(self) -> str:
        """The name of the forget set's primary score (what ctx.score measures)."""
        return PRIMARY_METRIC[self.kind]

    def chance(self, rows: Sequence[Row]) -> float | None:
        """The accuracy of guessing on choice rows; None for qa and text rows (their scores have no chance level)."""
        choice_rows = [row for row in rows if isinstance(row, ChoiceRow)]
        return chance(choice_rows) if choice_rows and len(choice_rows) == len(rows) else None

    def split(self, name: str) -> Sequence[Row]:
        """forget_train or forget_heldout."""
        if name == "forget_train":
            return self.forget_train
        if name == "forget_heldout":
            return self.forget_heldout
        raise ValueError(f"unknown forget split {name!r}; allowed: forget_train, forget_heldout")

    def retain_rows(self) -> list[Row]:
        """Every retain set's rows, in order."""
        return [row for rows in self.retain.values() for row in rows]

    def score(self, rows: Sequence[Row], lm: CausalLM | None = None) -> RowScores:
        """The rows' primary score (accuracy, or mean answer/text probability) under `lm` (default: peft_lm),
        with each row's part of it."""
        return RowScores(primary_row_scores(self.peft_lm if lm is None else lm, self.tokenizer, rows, self.batch_size))

    def reference_score(self, rows: Sequence[Row], lm: Literal["before", "forgotten", "control"]) -> RowScores:
        """The score of `rows` under the LM before forgetting, the forgotten LM or the never-learned control,
        computed once per audit.

        Most attacks compare against the same two scores of the same split; they share them through this cache.
        A pass that must run anyway (to capture hidden states or block outputs) scores for itself instead.
        """
        key = (lm, tuple(rows))
        states = {"before": self.before, "forgotten": self.forgotten, "control": self.control}
        state = states[lm]
        if state is None:
            raise ValueError("this audit has no never-learned control (the forget job did not fine-tune first)")
        if key not in self._reference_scores:
            with self.using(state):
                self._reference_scores[key] = self.score(rows)
        return self._reference_scores[key]

    def diagnostic_baseline(self, rows: Sequence[Row], blocks: Sequence[int]) -> DiagnosticBaseline:
        """The diagnostics' baseline on `rows` with the forgotten pass's outputs of `blocks`, computed once per audit:
        one pass of the LM before forgetting and one of the forgotten LM (again only when a later diagnostic needs
        the outputs of a block the first did not keep; the scorer stays the same)."""
        key = tuple(rows)
        baseline = self._baselines.get(key)
        if baseline is not None and set(blocks) <= set(baseline.block_outputs):
            return baseline
        keep = set(blocks) | (set(baseline.block_outputs) if baseline is not None else set())
        if baseline is None:
            with self.before_lm():
                before = answer_logits(self.peft_lm, self.tokenizer, rows, self.batch_size, self.limit)
        # The forgotten pass keeps each row's MSE(before, forgotten), not its logits; run again only for the block
        # outputs, it keeps nothing (the recovery is the first pass's).
        measure = KnowledgeRecovery.moved_by(before) if baseline is None else (lambda _row, _logits: 0.0)
        with captured(describe(self.peft_lm).blocks, sorted(keep)) as outputs:
            moved = each_answer_logits(self.peft_lm, self.tokenizer, rows, self.batch_size, self.limit, measure)
        recovery = KnowledgeRecovery(before, moved, self.seed) if baseline is None else baseline.recovery
        self._baselines[key] = DiagnosticBaseline(recovery, outputs)
        return self._baselines[key]

    def keep_reference_score(
        self, rows: Sequence[Row], lm: Literal["before", "forgotten", "control"], scores: RowScores
    ) -> None:
        """Record `rows`' primary score under a reference LM that a pass run anyway computed (the probe's passes
        score both forget splits under every reference LM), so `reference_score` does not compute it again. The
        scores must be what `score` gives for those rows (same rows, order and batch size)."""
        self._reference_scores.setdefault((lm, tuple(rows)), scores)

    @contextlib.contextmanager
    def using(self, state: Mapping[str, torch.Tensor]) -> Iterator[PeftModel]:
        """`peft_lm` with the adapter weights `state`; the forgotten weights are back on exit, whatever happened."""
        load_lora_state(self.peft_lm, state)
        try:
            yield self.peft_lm
        finally:
            load_lora_state(self.peft_lm, self.forgotten)

    def before_lm(self) -> contextlib.AbstractContextManager[PeftModel]:
        """The LM before forgetting."""
        return self.using(self.before)

    def control_lm(self) -> contextlib.AbstractContextManager[PeftModel]:
        """The never-learned control (ValueError when the audit has none)."""
        if self.control is None:
            raise ValueError("this audit has no never-learned control (the forget job did not fine-tune first)")
        return self.using(self.control)

    def outcome(
        self, split: str, rows: Sequence[Row], before: float, after_forgetting: float, variants: list[Variant]
    ) -> AttackOutcome:
        """An attack's outcome on `rows` of `split`, measured by the forget set's primary score."""
        return AttackOutcome(
            metric=self.metric,
            split=split,
            before=before,
            after_forgetting=after_forgetting,
            variants=variants,
            chance=self.chance(rows),
        )
