"""Activation checkpointing for a training batch whose activations would pass a memory budget.

A training step keeps every decoder layer's activations for the backward pass: for SmolLM2-135M about 1.8 MB per
token in fp32 (30 layers), so a batch of 8 ARC rows (about 500 tokens) holds some 900 MB, more than the LM's weights.
With LETHE_ACTIVATION_BUDGET_MB set, a step whose estimate passes it runs with transformers' activation
checkpointing on the decoder layers: each layer keeps only its input and runs its forward again during the backward
pass. The gradients are the same; the step costs one more forward pass (about half again the compute of a LoRA
step, whose backward needs no weight gradients). Unset or 0 (the default): never, as speed matters more than memory
on most hosts. Read here and nowhere else, on every step.

The estimate (`activation_bytes`) counts what a decoder layer of the usual layout saves per token: about 16 vectors
of the hidden size (norms, attention's projections and output, the residual stream) and 4 of the MLP's inner size
(its two projections, the activation and their product), in 4-byte floats, over every layer. It is a rule of thumb
for deciding, not a measurement: bench/jobs.py measures the peak.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from transformers import PreTrainedModel

log = logging.getLogger(__name__)

ACTIVATION_BUDGET_VARIABLE = "LETHE_ACTIVATION_BUDGET_MB"


def activation_budget_bytes() -> int | None:
    """LETHE_ACTIVATION_BUDGET_MB in bytes; None when unset or 0 (no budget). ValueError naming a bad value."""
    raw = os.environ.get(ACTIVATION_BUDGET_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        megabytes = float(raw)
    except ValueError:
        raise ValueError(f"{ACTIVATION_BUDGET_VARIABLE}={raw!r} is not a number of megabytes") from None
    if megabytes < 0:
        raise ValueError(f"{ACTIVATION_BUDGET_VARIABLE}={raw!r} is negative")
    return int(megabytes * 2**20) or None


def activation_bytes(lm: PreTrainedModel, tokens: int) -> int:
    """The rule-of-thumb bytes a training step on `tokens` tokens keeps for its backward pass (module docstring)."""
    config: Any = lm.config
    hidden = int(config.hidden_size)
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    return tokens * int(config.num_hidden_layers) * (16 * hidden + 4 * inner) * 4


def needs_checkpointing(lm: PreTrainedModel, tokens: int) -> bool:
    """Whether a step on `tokens` tokens passes the activation budget (never without one)."""
    budget = activation_budget_bytes()
    return budget is not None and activation_bytes(lm, tokens) > budget


@contextlib.contextmanager
def checkpointed(lm: PreTrainedModel, on: bool) -> Iterator[bool]:
    """Within the block, `lm`'s decoder layers run with activation checkpointing if `on` and the LM supports it;
    yields whether they do."""
    if not on:
        yield False
        return
    if not lm.supports_gradient_checkpointing:
        log.warning("%s does not support activation checkpointing: training without it", type(lm).__name__)
        yield False
        return
    enable = getattr(lm, "activation_checkpointing_enable", None)  # transformers ≥ 5.18; the old name before
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield True
    finally:
        disable = getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable
        disable()
