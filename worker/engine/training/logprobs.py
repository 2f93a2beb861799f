"""Log-probabilities of a batch's target tokens from the LM's logits, and the NLL every objective starts from.

The logits of a training batch are its largest tensors: [batch, kept columns, vocabulary] in fp32, 24 to 60 MB for
the demo job's batches of 8 PIQA rows (16 to 40 columns of SmolLM2's 49,152 words). `torch.log_softmax` then
`gather` keeps a second tensor of that size for the backward pass (the log-softmax's output), and the backward
builds three more (the gather's scattered gradient, the log-softmax's input gradient, and the zeros the `[:, :-1]`
slice's gradient is copied into). `_TargetLogProb` computes the same numbers, log p(y_t) = z_t[y_t] − logsumexp(z_t),
saving only the logits the LM made anyway and one float per position; its backward writes the gradient,
g_t · (1[j = y_t] − softmax(z_t)_j), into a single tensor of the logits' size. Both passes go over the positions in
chunks of LOGSUMEXP_CHUNK_BYTES, so no other vocabulary-wide temporary is made.

Measured on an AMD EPYC (Zen 5) with LETHE_PRECISION=fp32, as a worker (jemalloc, bounded matmul caches): the demo
forget job (bench/audit_bench.py's) peaked at 1,542 MB RSS fine-tuning and 1,578 MB forgetting, against 1,609 and
1,638 MB with log_softmax; the training bench's loop ran 128-135 against 125-128 tokens/s, runs alternated, with
the same losses to 4 decimals.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.engine.training.batches import IGNORE

# The most bytes of vocabulary-wide temporaries (exp of the logits) one chunk of positions makes.
LOGSUMEXP_CHUNK_BYTES = 16 * 2**20


def _chunks(rows: int, vocab: int) -> range:
    return range(0, rows, max(1, LOGSUMEXP_CHUNK_BYTES // (vocab * 4)))


class _TargetLogProb(torch.autograd.Function):
    """log_softmax(logits)[..., target] over flat positions: logits [n, vocab] (fp32), targets [n] (valid ids)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows, vocab = logits.shape
        lse = torch.empty(rows, dtype=logits.dtype, device=logits.device)
        step = _chunks(rows, vocab).step
        for start in range(0, rows, step):
            lse[start : start + step] = torch.logsumexp(logits[start : start + step], dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(-1, targets[:, None]).squeeze(-1) - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        rows, vocab = logits.shape
        result = torch.empty_like(logits)
        step = _chunks(rows, vocab).step
        for start in range(0, rows, step):
            end = start + step
            # −g · softmax(z) = −g · exp(z − logsumexp(z)), in place in the result's rows.
            chunk = torch.sub(logits[start:end], lse[start:end, None], out=result[start:end])
            chunk.exp_().mul_(-grad[start:end, None])
        result.scatter_add_(-1, targets[:, None], grad[:, None].to(result.dtype))
        return result, None


def aligned_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labels of the positions `logits` cover: the last ones when the LM kept only a batch's last columns."""
    return labels[:, labels.shape[1] - logits.shape[1] :]


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of every target token, mask), both [batch, columns − 1]; position t's logits predict token t + 1.

    `logits` may cover only the last columns of `labels` (see `Batch.keep`). The last column predicts no token of
    the batch: it is computed with the others (a slice of it would cost a copy of the logits in the backward) and
    dropped.
    """
    batch, columns, vocab = logits.shape
    aligned = aligned_labels(logits, labels)
    # Position t's target is token t + 1; the last column's is none.
    targets = torch.cat([aligned[:, 1:], aligned.new_full((batch, 1), IGNORE)], dim=1)
    mask = targets != IGNORE
    flat = logits.float().reshape(batch * columns, vocab)
    gathered = _TargetLogProb.apply(flat, targets.clamp(min=0).reshape(-1)).reshape(batch, columns)
    return gathered[:, :-1] * mask[:, :-1], mask[:, :-1]


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's target tokens, their count), both [batch]."""
    token_logprobs, mask = target_logprobs(logits, labels)
    return token_logprobs.sum(-1), mask.sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every target token of the batch (the HF causal-LM loss)."""
    summed, counts = sequence_logprob(logits, labels)
    return -summed.sum() / counts.sum().clamp(min=1)
