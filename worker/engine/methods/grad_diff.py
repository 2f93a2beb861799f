"""Gradient difference (open-unlearning GradDiff): ascent on forget, descent on retain.

NPO, SimNPO and idk are GradDiff with another forget loss, as in open-unlearning.
"""

from __future__ import annotations

import torch

from lethe.methods import RetainParams
from worker.engine.methods.losses import retain_loss
from worker.engine.training.objective import LossTerms, Objective, Step


class GradDiff(Objective):
    """loss = γ·forget loss + α·retain loss; the forget loss is −NLL of the forget targets (subclasses change it)."""

    def __init__(self, params: RetainParams) -> None:
        self.gamma = params.gamma
        self.alpha = params.alpha
        self.retain_loss = params.retain_loss
        self.uses_retain = params.alpha > 0

    def forget_loss(self, step: Step) -> torch.Tensor:
        return -step.target_logits(step.forget).mean_nll()

    def losses(self, step: Step) -> LossTerms:
        retain = self.alpha * retain_loss(step, self.retain_loss) if self.uses_retain else None
        return LossTerms(forget=self.gamma * self.forget_loss(step), retain=retain)


def build(params: RetainParams, seed: int) -> GradDiff:
    """The gradient-difference objective (no randomness of its own)."""
    return GradDiff(params)
