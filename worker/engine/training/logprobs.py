"""Log-probabilities of a batch's target tokens from the LM's logits, and the NLL every objective starts from.

The logits of a training batch are its largest tensors: [batch, kept columns, vocabulary] in fp32, 24 to 60 MB for
the demo job's batches of 8 PIQA rows (16 to 40 columns of SmolLM2's 49,152 words). `torch.log_softmax` then
`gather` keeps a second tensor of that size for the backward pass (the log-softmax's output), and the backward
builds three more (the gather's scattered gradient, the log-softmax's input gradient, and the zeros the `[:, :-1]`
slice's gradient is copied into). `_TargetLogProb` computes the same numbers, log p(y_t) = z_t[y_t] − logsumexp(z_t),
saving only the logits the LM made anyway and one float per position; its backward writes the gradient,
g_t · (1[j = y_t] − softmax(z_t)_j), into a single tensor of the logits' size. Both passes go over the positions in
chunks of LOGSUMEXP_CHUNK_BYTES, so no other vocabulary-wide temporary is made.

A training step reads only those positions (`TargetLogits`): the LM head runs at the positions that predict a
target token and nowhere else (`objective._target_forward`), instead of every row's last `keep` columns.

Measured on an AMD EPYC (Zen 5) with LETHE_PRECISION=fp32, as a worker (jemalloc, bounded matmul caches), the demo
forget job (bench/audit_bench.py's) peaked fine-tuning and forgetting at 1,609 and 1,638 MB RSS with log_softmax
over the kept columns, 1,542 and 1,578 MB with `_TargetLogProb` over them, and 1,463 and 1,505 MB with it over the
target positions alone. The training bench's loop (ARC-Easy, short answers), runs of the two codes alternated: in
fp32 125-128 against 128-135 tokens/s for the first change and no difference for the second (141-161 against
148-163); under bf16 autocast, where the fp32 head is a larger share of the step, 260-342 against 229-270 for the
second. Losses the same to 4 decimals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from worker.engine.training.batches import IGNORE

# The most bytes of vocabulary-wide temporaries (exp of the logits) one chunk of positions makes.
LOGSUMEXP_CHUNK_BYTES = 16 * 2**20


def _chunks(logits: torch.Tensor) -> Iterator[slice]:
    """The row slices of `logits` [n, vocab] that make at most LOGSUMEXP_CHUNK_BYTES of fp32 temporaries each."""
    rows, vocab = logits.shape
    step = max(1, LOGSUMEXP_CHUNK_BYTES // (vocab * 4))
    return (slice(start, start + step) for start in range(0, rows, step))


class _TargetLogProb(torch.autograd.Function):
    """log_softmax(logits)[..., target] over flat positions: logits [n, vocab] (fp32), targets [n] (valid ids)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = logits.new_empty(logits.shape[0])
        for rows in _chunks(logits):
            lse[rows] = torch.logsumexp(logits[rows], dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(-1, targets[:, None]).squeeze(-1) - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        result = torch.empty_like(logits)
        for rows in _chunks(logits):
            # −g · softmax(z) = −g · exp(z − logsumexp(z)), in place in the result's rows.
            torch.sub(logits[rows], lse[rows, None], out=result[rows]).exp_().mul_(-grad[rows, None])
        result.scatter_add_(-1, targets[:, None], grad[:, None].to(result.dtype))
        return result, None


class _ReferenceKL(torch.autograd.Function):
    """KL(softmax(reference) ‖ softmax(logits)) of each position, both [n, vocab] (fp32), differentiated in `logits`.

    The textbook form (two log_softmax, an exp, a difference and a product, each vocabulary-wide) keeps several
    tensors of the logits' size for the backward; a retain batch of text rows is all targets (8 rows of 200 tokens:
    314 MB per tensor for SmolLM2). Here the forward goes over chunks of positions and saves the two inputs, which
    exist anyway; the backward writes g · (softmax(logits) − softmax(reference)) into one tensor of the logits' size.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        kl = logits.new_empty(logits.shape[0])
        for rows in _chunks(logits):
            # Σ q (log q − log p), both log-softmaxes computed alike: a position where the two LMs agree reads 0.
            log_p = torch.log_softmax(logits[rows], dim=-1)
            log_q = torch.log_softmax(reference[rows], dim=-1)
            kl[rows] = (log_q.exp() * log_q.sub_(log_p)).sum(-1)
        ctx.save_for_backward(logits, reference)
        return kl

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, reference = ctx.saved_tensors
        result = torch.empty_like(logits)
        for rows in _chunks(logits):
            result[rows] = torch.softmax(logits[rows], dim=-1)
            result[rows].sub_(torch.softmax(reference[rows], dim=-1)).mul_(grad[rows, None])
        return result, None


def aligned_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labels of the positions `logits` cover: the last ones when the LM kept only a batch's last columns."""
    return labels[:, labels.shape[1] - logits.shape[1] :]


@dataclass(frozen=True)
class TargetLogits:
    """A batch's logits at the positions that predict a target token, and nowhere else.

    `logits` [n, vocab]: one row per target token, the batch's rows in order and each row's positions in order;
    `targets` [n] the tokens they predict, `rows` [n] the batch row each belongs to, of `batch_size` rows. A padded
    batch's [batch, keep, vocab] logits hold every row's positions up to the longest target (the demo job's PIQA
    batches: 2.1 positions for each target token); a training step's forward computes these alone
    (`objective._target_forward`)."""

    logits: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    batch_size: int

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor) -> TargetLogits:
        """From a batch's logits [batch, columns, vocab] (its last columns: see `Batch.keep`) and its labels;
        position t's logits predict token t + 1."""
        predicted = aligned_labels(logits, labels)[:, 1:]
        mask = predicted != IGNORE
        return cls(logits[:, :-1][mask], predicted[mask], mask.nonzero()[:, 0], int(labels.shape[0]))

    def token_logprobs(self) -> torch.Tensor:
        """log p of each target token [n], in fp32."""
        return _TargetLogProb.apply(self.logits.float(), self.targets)

    def sequence_logprob(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-probability of each row's target tokens, their count), both [batch]."""
        logprobs = self.token_logprobs()
        summed = logprobs.new_zeros(self.batch_size).index_add(0, self.rows, logprobs)
        return summed, torch.bincount(self.rows, minlength=self.batch_size)

    def mean_nll(self) -> torch.Tensor:
        """Mean NLL over every target token of the batch (the HF causal-LM loss)."""
        return -self.token_logprobs().sum() / max(int(self.targets.numel()), 1)

    def kl_from(self, reference: TargetLogits) -> torch.Tensor:
        """KL(π_ref ‖ π) of the next-token distributions at each target position [n], in fp32: `reference` holds
        another LM's logits at the same positions."""
        return _ReferenceKL.apply(self.logits.float(), reference.logits.float().detach())


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's target tokens, their count), both [batch], from a batch's logits
    [batch, columns, vocab] (see `TargetLogits.of`)."""
    return TargetLogits.of(logits, labels).sequence_logprob()


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every target token of the batch (the HF causal-LM loss), from its logits as `sequence_logprob`."""
    return TargetLogits.of(logits, labels).mean_nll()
