"""The decoder blocks of a causal LM (found by `architecture.describe`): read their outputs and perturb them.

"The hidden state at layer l" is the output of decoder block l (0-based), which transformers numbers
hidden_states[l + 1] (hidden_states[0] being the embeddings). Reading it with a forward hook is exact for every
block; transformers' last hidden_states entry has the final norm applied on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from worker.engine.lm.architecture import describe


def decoder_blocks(lm: PreTrainedModel | PeftModel) -> torch.nn.ModuleList:
    """The LM's decoder blocks, in order (ValueError naming the LM's class for an unsupported layout)."""
    return describe(lm).blocks


def decoder_block(lm: PreTrainedModel | PeftModel, layer: int) -> torch.nn.Module:
    """Decoder block `layer` (0-based); ValueError when the LM has no such block."""
    return describe(lm).block(layer)


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
