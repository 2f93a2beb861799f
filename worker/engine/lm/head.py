"""The LM head computing logits at chosen positions only: scoring needs the vocab-sized logits of the positions
that predict a scored token, and a batch's full (batch, length, vocab) logits are most of a scoring pass's memory."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
