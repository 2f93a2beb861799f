"""Gradient ascent: push the probability of the true answer down on the forget-train rows."""

from __future__ import annotations

import torch

from worker.engine.methods.params import GradientAscentParams
from worker.engine.training import ChoiceObjective


class GradientAscent(ChoiceObjective):
    """loss = −NLL of the true answer's continuation tokens (the NLL is maximised)."""

    def loss(self, nll: torch.Tensor) -> torch.Tensor:
        """The negated NLL: minimising it is gradient ascent on the true answer's NLL."""
        return -nll


def build(params: GradientAscentParams, seed: int) -> GradientAscent:
    """The gradient-ascent objective (it has no params or randomness of its own)."""
    return GradientAscent()
