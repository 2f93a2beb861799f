"""Random-label fine-tuning (Zhang, Choshen & Andreas, arXiv 2409.02228)."""

from __future__ import annotations

import random

from worker.engine.data import ChoiceRow
from worker.engine.methods.params import RandomLabelParams
from worker.engine.training import ChoiceObjective


class RandomLabel(ChoiceObjective):
    """Fine-tune on a label drawn uniformly from the row's choices (the true one included), anew each epoch.

    Trained to convergence this makes the LM's choice on a trained row uninformative: the best it can do
    against uniform labels is a uniform distribution over the choices.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def target(self, epoch: int, index: int, row: ChoiceRow) -> int:
        """A uniform draw that depends only on (seed, epoch, row index), so runs are reproducible."""
        # String seeds are hashed (SHA-512) and random() is stable across Python versions.
        draw = random.Random(f"{self.seed}/label/{epoch}/{index}").random()
        return int(draw * len(row.choices))


def build(params: RandomLabelParams, seed: int) -> RandomLabel:
    """The random-label objective for a run seeded with `seed`."""
    return RandomLabel(seed)
