"""Teacher-forced per-token statistics of target continuations: one forward pass gives every such metric.

For each (context_ids, target_ids) pair: log p of every target token given everything before it, whether it is
the argmax, and the mean and standard deviation of log p(z) over the vocabulary at that position (min-k%++).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from worker.engine.lm.head import head_only_at, logit_positions_budget
from worker.engine.lm.inputs import fit_pair, longest_first, max_length, pad
from worker.engine.lm.load import CausalLM
from worker.engine.lm.placement import input_device


@dataclass(frozen=True)
class TokenScores:
    """Statistics of one target, one entry per target token (float64 / bool numpy arrays)."""

    token_ids: np.ndarray  # the target tokens scored
    log_probs: np.ndarray  # log p(y_t | x, y_<t)
    correct: np.ndarray  # argmax_z p(z | x, y_<t) == y_t
    mean: np.ndarray  # μ_t = Σ_z p(z) log p(z)
    std: np.ndarray  # σ_t = sqrt(Σ_z p(z) (log p(z) − μ_t)²)

    def __len__(self) -> int:
        return len(self.log_probs)


def score_tokens(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[TokenScores]:
    """TokenScores of every (context_ids, target_ids) pair, in order; `on_batch(n)` after each batch of n pairs."""
    limit = max_length(lm, tokenizer)
    sequences = [fit_pair(context, target, limit) for context, target in pairs]
    scored: dict[int, TokenScores] = {}
    device = input_device(lm)
    lm.eval()
    with torch.inference_mode():
        lengths = [len(sequence) for sequence, _ in sequences]
        n_targets = [n_target for _, n_target in sequences]
        budget = logit_positions_budget(lm.get_output_embeddings())
        for batch in longest_first(lengths, batch_size, costs=n_targets, max_cost=budget):
            # Right padding leaves every real position as it is.
            input_ids, attention_mask = pad([sequences[i][0] for i in batch], tokenizer.pad_token_id, device, "right")
            # Logits at position t predict token t + 1: the head runs only at the positions predicting a target
            # token (a batch's full (batch, length, vocab) logits would be most of the pass's memory).
            spans = [(len(sequences[i][0]) - sequences[i][1] - 1, len(sequences[i][0]) - 1) for i in batch]
            predictors = (
                torch.tensor([j for j, (start, end) in enumerate(spans) for _ in range(start, end)], device=device),
                torch.tensor([t for start, end in spans for t in range(start, end)], device=device),
            )
            with head_only_at(lm.get_output_embeddings(), predictors):
                logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits
            if logits.shape[:2] != (1, len(predictors[0])):
                raise ValueError(f"{type(lm).__name__} does not compute its logits with its output embeddings module")
            first = 0
            for i in batch:
                sequence, n_target = sequences[i]
                length = len(sequence)
                log_probs = torch.log_softmax(logits[0, first : first + n_target].float(), dim=-1)
                first += n_target
                targets = torch.tensor(sequence[length - n_target :], device=device)
                probs = log_probs.exp()
                # p log p is 0 where p is 0 (a -inf logit would otherwise give 0 · -inf = nan).
                mean = torch.where(probs > 0, probs * log_probs, 0.0).sum(-1)
                # Σ p (log p − μ)² rather than E[(log p)²] − μ², which cancels badly in fp32.
                deviation = torch.where(probs > 0, log_probs - mean[:, None], 0.0)
                variance = (probs * deviation.square()).sum(-1)
                scored[i] = TokenScores(
                    token_ids=targets.cpu().numpy(),
                    log_probs=log_probs.gather(1, targets[:, None]).squeeze(1).double().cpu().numpy(),
                    correct=(log_probs.argmax(-1) == targets).cpu().numpy(),
                    mean=mean.double().cpu().numpy(),
                    std=variance.sqrt().double().cpu().numpy(),
                )
            if on_batch is not None:
                on_batch(len(batch))
    return [scored[i] for i in range(len(sequences))]
