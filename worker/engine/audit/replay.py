"""Scoring from a block up: block l's outputs replayed from an earlier pass, the blocks up to l skipped.

Patching and restoration both score many variants of the LM that differ only from some block up. A pass that
takes block l's output from an earlier pass over the same rows (same batches, same order) needs nothing below
it: blocks 0..l are replaced by pass-throughs, and the first block computed is l + 1. The numbers are those of the
full pass (a test checks it); the saving is the share of the depth below l.

Captured outputs cost tokens × hidden size × the activation dtype's bytes per block: on SmolLM2 (hidden 576, fp32)
about 2.3 kB per token per block, so 48 PIQA rows hold about 9 MB per block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from worker.engine.lm.blocks import block_outputs, transformed_block_output


class PassThrough(torch.nn.Module):
    """Stands in for a decoder block whose output nothing reads: returns its input hidden state unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextlib.contextmanager
def captured(blocks: torch.nn.ModuleList, layers: Sequence[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """The outputs of blocks `layers` in every forward call made inside the context, by block."""
    with contextlib.ExitStack() as stack:
        yield {layer: stack.enter_context(block_outputs(blocks[layer])) for layer in set(layers)}


@contextlib.contextmanager
def skipped_up_to(blocks: torch.nn.ModuleList, layer: int) -> Iterator[None]:
    """Blocks 0..layer replaced by pass-throughs inside the context; the real blocks are back on exit."""
    originals = [blocks[i] for i in range(layer + 1)]
    for i in range(layer + 1):
        blocks[i] = PassThrough()
    try:
        yield
    finally:
        for i, original in enumerate(originals):
            blocks[i] = original


@contextlib.contextmanager
def replayed(blocks: torch.nn.ModuleList, layer: int, outputs: Sequence[torch.Tensor]) -> Iterator[None]:
    """Forward passes inside start above block `layer`, whose output in call i is outputs[i].

    RuntimeError when the passes do not batch like the capturing pass (a shape differs, or the number of calls).
    """
    replacements = iter(outputs)

    def replace(hidden: torch.Tensor) -> torch.Tensor:
        output = next(replacements, None)
        if output is None or output.shape != hidden.shape:
            raise RuntimeError(f"block {layer}: the replaying pass does not batch like the capturing pass")
        return output

    # The hook sits on the block's stand-in, looked up after the swap.
    with skipped_up_to(blocks, layer), transformed_block_output(blocks[layer], replace):
        yield
    if next(replacements, None) is not None:
        raise RuntimeError(f"block {layer}: the replaying pass made fewer forward calls than the capturing pass")


def replayed_below(
    blocks: torch.nn.ModuleList, start: int, outputs: dict[int, list[torch.Tensor]]
) -> contextlib.AbstractContextManager[None]:
    """Passes that start at block `start` from the outputs of the block below captured in `outputs` (as `captured`
    gives them); at block 0 there is nothing to skip."""
    return replayed(blocks, start - 1, outputs[start - 1]) if start > 0 else contextlib.nullcontext()
