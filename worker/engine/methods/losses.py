"""The methods' loss formulas: on tensors (so they can be checked by hand) and on a training step's batches."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from worker.engine.training.batches import Batch
from worker.engine.training.logprobs import TargetLogits
from worker.engine.training.objective import Step


def npo_loss(log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: mean of −(2/β)·log σ(−β·r), r = log π_θ(y|x) − log π_ref(y|x) per sequence; (2/β)·log 2 at r = 0.

    As r → −∞ (y forgotten) the loss → 0 and its gradient vanishes, which is what keeps NPO from the runaway of
    gradient ascent; as β → 0 the gradient becomes gradient ascent's.
    """
    return -(2 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def simnpo_loss(nll: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO: mean of −(2/β)·log σ(β·(NLL/|y| − δ)), NLL summed over the |y| target tokens of each sequence."""
    return -(2 / beta) * F.logsigmoid(beta * (nll / n_tokens.clamp(min=1) - delta)).mean()


def dpo_loss(win_log_ratio: torch.Tensor, lose_log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO scaled as open-unlearning's: mean of −(2/β)·log σ(β·(r_win − r_lose)), r = log π_θ − log π_ref."""
    return -(2 / beta) * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()


def kl_to_reference(current: TargetLogits, reference: TargetLogits) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) of the next-token distributions, averaged over the target tokens (the positions both hold)."""
    return current.kl_from(reference).sum() / max(int(current.targets.numel()), 1)


def activation_distance(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's distance: per token |hidden − target|² / d, averaged over each sequence's `mask`, then over sequences.

    Dividing by the hidden size d is WMDP's code (mse_loss); the paper writes |·|². The defaults c = 6.5 and
    α = 1200 were tuned with the code.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    weights = mask.to(per_token.device, per_token.dtype)  # the block's device, for an LM spread over GPUs
    return ((per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1)).mean()


def log_ratio(step: Step, batch: Batch) -> torch.Tensor:
    """log π_θ(y|x) − log π_ref(y|x) of each sequence's target (log-probabilities summed over its tokens)."""
    logprob, _ = step.target_logits(batch).sequence_logprob()
    reference, _ = step.reference_target_logits(batch).sequence_logprob()
    return logprob - reference


def retain_batch(step: Step) -> Batch:
    """The step's retain batch (the objective said it uses one)."""
    if step.retain is None:
        raise ValueError("this loss needs a retain batch and the step has none")
    return step.retain


def retain_loss(step: Step, kind: Literal["nll", "kl"]) -> torch.Tensor:
    """The retain batch's mean NLL, or KL(π_ref ‖ π_θ) averaged over its target tokens."""
    batch = retain_batch(step)
    logits = step.target_logits(batch)
    if kind == "nll":
        return logits.mean_nll()
    return kl_to_reference(logits, step.reference_target_logits(batch))
