"""The LM head computing logits at chosen positions only: scoring needs the vocab-sized logits of the positions
that predict a scored token, and a batch's full (batch, length, vocab) logits are most of a scoring pass's memory.
Even those chosen positions can be many (a batch of long continuations: PIQA's solutions run to a hundred tokens
each), so scoring batches also end at `logit_positions_budget` positions."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# The most bytes of fp32 logits one scoring batch may compute. Scoring holds about three such tensors at once (the
# logits, the log-sum-exp's intermediate and the log-probabilities): 32 MiB (170 positions of SmolLM2's 49,152-word
# vocabulary, 65 of Llama-3's 128,256) keeps that near 100 MB, where a batch of SmolLM2's PIQA continuations (about
# 800 positions) took 250 MB above the job's resident set. The bench's whole SmolLM2 job peaked 2,164 MB at 64 MiB
# and 2,145 MB at 32 MiB; with LETHE_ACTIVATION_BUDGET_MB=256 too, 1,623 and 1,572 MB (bench/jobs.py, Intel Xeon).
LOGITS_BUDGET_BYTES = 32 * 2**20


def logit_positions_budget(head: torch.nn.Module) -> int:
    """How many positions' logits one scoring batch may compute with `head` (its rows: the vocabulary)."""
    vocab = int(head.get_parameter("weight").shape[0])
    return max(1, LOGITS_BUDGET_BYTES // (vocab * 4))


@contextmanager
def head_only_at(head: torch.nn.Module, selection: tuple[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    """The LM head computes logits only at the (batch, position) pairs in `selection`, as one (1, n) batch.

    The head still runs inside the LM's own forward, so any scaling or capping of its logits still applies;
    it just never computes the vocab-sized logits of the positions that predict no continuation token.
    """

    def gather(_module: torch.nn.Module, args: tuple) -> tuple:
        states = args[0]  # on the last block's device, for an LM spread over GPUs
        return (states[tuple(index.to(states.device) for index in selection)][None], *args[1:])

    # Prepended: the gather runs before full_precision's cast, which then casts the gathered states only.
    handle = head.register_forward_pre_hook(gather, prepend=True)
    try:
        yield
    finally:
        handle.remove()
