"""DPO towards refusals (open-unlearning's IdkDPO): prefer an "I don't know" answer to the forget target.

Each forget row is paired, anew every epoch, with a refusal drawn uniformly from the refusal set (seeded by run,
epoch and row). The refusal is the continuation of the row's context as its target is: after a qa row's question
template, or after a choice row's prompt the way a choice is appended (with one space, unless the prompt already
ends in whitespace). Text rows have no question to refuse and are not supported.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from lethe.methods import IdkParams
from lethe.rows import ChoiceRow, QARow, Row
from worker.engine.methods.grad_diff import GradDiff
from worker.engine.methods.losses import dpo_loss, log_ratio
from worker.engine.training.batches import Example, collate, make_example
from worker.engine.training.objective import Step, TrainContext

REFUSALS_FILE = Path(__file__).with_name("idk_refusals.txt")


def tofu_refusals() -> list[str]:
    """TOFU's 100 refusal answers (locuslab/tofu data/idontknow.jsonl, MIT)."""
    lines = REFUSALS_FILE.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def refusal_continuation(context: str, refusal: str) -> str:
    """The refusal as the continuation of `context`: one space between them unless the context ends in one."""
    return refusal if context[-1:].isspace() else " " + refusal


class Idk(GradDiff):
    """Forget loss = DPO with win = a refusal, lose = the true forget target, against the reference LM."""

    def __init__(self, params: IdkParams, seed: int) -> None:
        super().__init__(params)
        self.beta = params.beta
        self.refusals = list(params.refusals) if params.refusals is not None else tofu_refusals()
        self.seed = seed
        self.rows: list[Row] = []
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.limit = 0
        self.refusal_examples: list[Example] = []

    def prepare(self, context: TrainContext) -> None:
        if not all(isinstance(row, ChoiceRow | QARow) for row in context.forget_rows):
            raise ValueError("idk needs choice or qa rows (a text row has no question to refuse)")
        self.rows = list(context.forget_rows)
        self.tokenizer = context.tokenizer
        self.limit = context.limit

    def refusal(self, epoch: int, index: int) -> str:
        """A uniform draw that depends only on (seed, epoch, row index), so runs are reproducible."""
        draw = random.Random(f"{self.seed}/refusal/{epoch}/{index}").random()
        return self.refusals[int(draw * len(self.refusals))]

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        if self.tokenizer is None:
            raise RuntimeError("prepare() was not called")
        self.refusal_examples = [
            make_example(
                self.tokenizer, row.context, refusal_continuation(row.context, self.refusal(epoch, i)), self.limit
            )
            for i, row in enumerate(self.rows)
        ]
        return examples

    def forget_loss(self, step: Step) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("prepare() was not called")
        if len(step.forget_indices) != step.forget.size:
            raise ValueError("idk pairs rows with refusals by the step's forget_indices, and they are missing")
        refusals = collate(
            [self.refusal_examples[i] for i in step.forget_indices],
            self.tokenizer.pad_token_id,
            step.forget.input_ids.device,
        )
        return dpo_loss(log_ratio(step, refusals), log_ratio(step, step.forget), self.beta)


def build(params: IdkParams, seed: int) -> Idk:
    """The idk objective for a run seeded with `seed` (which draws the refusals)."""
    return Idk(params, seed)
