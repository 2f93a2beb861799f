"""Negative preference optimisation (Zhang et al., arXiv 2404.05868) with a retain term (NPO+RT)."""

from __future__ import annotations

import torch

from lethe.methods import NPOParams
from worker.engine.methods.grad_diff import GradDiff
from worker.engine.methods.losses import log_ratio, npo_loss
from worker.engine.training.objective import Step


class NPO(GradDiff):
    """Forget loss = NPO on the forget targets against the reference (the LM before forgetting)."""

    def __init__(self, params: NPOParams) -> None:
        super().__init__(params)
        self.beta = params.beta

    def forget_loss(self, step: Step) -> torch.Tensor:
        return npo_loss(log_ratio(step, step.forget), self.beta)


def build(params: NPOParams, seed: int) -> NPO:
    """The NPO objective (no randomness of its own)."""
    return NPO(params)
