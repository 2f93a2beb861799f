"""The decoder blocks of a causal LM: find them, read their outputs, perturb them, and name the block an adapter
parameter sits in.

"The hidden state at layer l" is the output of decoder block l (0-based), which transformers numbers
hidden_states[l + 1] (hidden_states[0] being the embeddings). Reading it with a forward hook is exact for every
block; transformers' last hidden_states entry has the final norm applied on top.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from peft import PeftModel

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def decoder_blocks(lm: PeftModel) -> torch.nn.ModuleList:
    """The LM's decoder blocks, in order: its first module list with one entry per hidden layer."""
    n_layers = lm.config.num_hidden_layers
    for module in lm.get_base_model().modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the {n_layers} decoder blocks of {type(lm.get_base_model()).__name__}")


def decoder_block(lm: PeftModel, layer: int) -> torch.nn.Module:
    """Decoder block `layer` (0-based); ValueError when the LM has no such block."""
    blocks = decoder_blocks(lm)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} does not exist: the LM has {len(blocks)} decoder blocks (0-{len(blocks) - 1})")
    return blocks[layer]


def block_of(name: str) -> int | None:
    """The decoder block of an adapter parameter named `...layers.<i>....`; None for one outside the blocks."""
    match = _BLOCK.search(name)
    return int(match.group(1)) if match else None


def _hidden(output: Any) -> torch.Tensor:
    # Decoder blocks return the hidden state, or a tuple led by it (older transformers, other architectures).
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def block_outputs(block: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the hidden state `block` outputs in every forward pass made inside the context."""
    captured: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        captured.append(_hidden(output))

    handle = block.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextlib.contextmanager
def transformed_block_output(
    block: torch.nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace the hidden state `block` outputs by transform(hidden state) in forward passes inside the context."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (transform(output[0]), *output[1:])
        return transform(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
