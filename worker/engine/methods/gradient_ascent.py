"""Gradient ascent: push the probability of the forget rows' true targets down."""

from __future__ import annotations

from lethe.methods import GradientAscentParams
from worker.engine.training.objective import LossTerms, Objective, Step


class GradientAscent(Objective):
    """loss = −NLL of the forget targets' tokens (the NLL is maximised)."""

    def losses(self, step: Step) -> LossTerms:
        return LossTerms(forget=-step.target_logits(step.forget).mean_nll())


def build(params: GradientAscentParams, seed: int) -> GradientAscent:
    """The gradient-ascent objective (it has no params or randomness of its own)."""
    return GradientAscent()
