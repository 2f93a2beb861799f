"""Random-label fine-tuning (Zhang, Choshen & Andreas, arXiv 2409.02228)."""

from __future__ import annotations

import random

from lethe.methods import RandomLabelParams
from lethe.rows import ChoiceRow
from worker.engine.training.batches import Example, make_example
from worker.engine.training.objective import Objective, TrainContext


class RandomLabel(Objective):
    """Fine-tune on a label drawn uniformly from the row's choices (the true one included), anew each epoch.

    Trained to convergence this makes the LM's choice on a trained row uninformative: the best it can do
    against uniform labels is a uniform distribution over the choices. Choice rows only.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.choice_examples: list[list[Example]] = []

    def prepare(self, context: TrainContext) -> None:
        if not all(isinstance(row, ChoiceRow) for row in context.forget_rows):
            raise ValueError("random_label needs choice rows")
        self.choice_examples = [
            [make_example(context.tokenizer, row.prompt, choice, context.limit) for choice in row.choices]
            for row in context.forget_rows
            if isinstance(row, ChoiceRow)
        ]

    def label(self, epoch: int, index: int) -> int:
        """A uniform draw that depends only on (seed, epoch, row index), so runs are reproducible."""
        # String seeds are hashed (SHA-512) and random() is stable across Python versions.
        draw = random.Random(f"{self.seed}/label/{epoch}/{index}").random()
        return int(draw * len(self.choice_examples[index]))

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        return [choices[self.label(epoch, i)] for i, choices in enumerate(self.choice_examples)]


def build(params: RandomLabelParams, seed: int) -> RandomLabel:
    """The random-label objective for a run seeded with `seed`."""
    return RandomLabel(seed)
