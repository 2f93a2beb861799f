"""Log-probabilities of a batch's target tokens from the LM's logits, and the NLL every objective starts from."""

from __future__ import annotations

import torch

from worker.engine.training.batches import IGNORE


def aligned_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labels of the positions `logits` cover: the last ones when the LM kept only a batch's last columns."""
    return labels[:, labels.shape[1] - logits.shape[1] :]


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of every target token, mask), both [batch, columns − 1]; position t's logits predict token t + 1.

    `logits` may cover only the last columns of `labels` (see `Batch.keep`).
    """
    targets = aligned_labels(logits, labels)[:, 1:]
    mask = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    gathered = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return gathered * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's target tokens, their count), both [batch]."""
    token_logprobs, mask = target_logprobs(logits, labels)
    return token_logprobs.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every target token of the batch (the HF causal-LM loss)."""
    summed, counts = sequence_logprob(logits, labels)
    return -summed.sum() / counts.sum().clamp(min=1)
