"""SimNPO (Fan et al., 'Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning',
arXiv 2410.07163): NPO without a reference LM, on the length-normalised NLL.

Sign conventions as open-unlearning's simnpo.py and OPTML-Group/Unlearn-Simple: log σ(β·(NLL/|y| − δ)), so
the loss falls as the per-token NLL of the forget target rises past the margin δ. The paper writes
log σ(−(β/|y|)·log π_θ(y|x) − γ_paper), the same loss with γ_paper = β·δ.
"""

from __future__ import annotations

import torch

from lethe.methods import SimNPOParams
from worker.engine.methods.grad_diff import GradDiff
from worker.engine.methods.losses import simnpo_loss
from worker.engine.training.objective import Step


class SimNPO(GradDiff):
    """Forget loss = SimNPO on the forget targets; no reference forward."""

    def __init__(self, params: SimNPOParams) -> None:
        super().__init__(params)
        self.beta = params.beta
        self.delta = params.delta

    def forget_loss(self, step: Step) -> torch.Tensor:
        logprob, n_tokens = step.target_logits(step.forget).sequence_logprob()
        return simnpo_loss(-logprob, n_tokens, self.beta, self.delta)


def build(params: SimNPOParams, seed: int) -> SimNPO:
    """The SimNPO objective (no randomness of its own)."""
    return SimNPO(params)
