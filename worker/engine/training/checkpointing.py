"""Activation checkpointing for a training batch whose activations would pass a memory budget.

A training step keeps every decoder layer's activations for the backward pass: for SmolLM2-135M about 1.8 MB per
token in fp32 (30 layers), so a batch of 8 ARC-Easy rows (about 250 tokens) holds some 450 MB, near the LM's weights.
A step whose estimate passes the budget (LETHE_ACTIVATION_BUDGET_MB) runs with transformers' activation
checkpointing on just enough of the decoder layers to fit (`layers_to_checkpoint`): a checkpointed layer keeps only
its input and runs its forward again during the backward pass. The gradients are the same; each checkpointed layer
costs its forward once more, so a step a little over the budget pays for a few layers, not for all of them (every
layer recomputed is about half again the compute of a LoRA step, whose backward needs no weight gradients). The
checkpointed layers are spread evenly over the depth. 0: never. Read here and nowhere else, on every step.

Unset, the budget is CPU_BUDGET_MB on a CPU and none on a GPU. A CPU worker shares the host's memory with
everything else on it, and there activations are most of a job's peak: a whole SmolLM2 forget job (bench/jobs.py,
AMD EPYC with native bf16) peaked at 1,629 MB without a budget and 1,441 MB with 256 MB, for about 10-15% of the
training speed (bf16: 267-317 against 241-263 tokens/s; fp32: 172-185 against 151-153; bench/training_bench.py's
64 ARC-Easy rows, runs alternated), still about 2× the naive PEFT loop in bf16 and 1.4× in fp32. A GPU has its
own memory, sized for the job (`placement.py`), and speed is what it is for.

The estimate (`activation_bytes`) counts what a decoder layer of the usual layout saves per token: about 16 vectors
of the hidden size (norms, attention's projections and output, the residual stream) and 4 of the MLP's inner size
(its two projections, the activation and their product), in 4-byte floats, over every layer. It is a rule of thumb
for deciding, not a measurement: bench/jobs.py measures the peak.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from transformers import PreTrainedModel

from worker.engine.lm.blocks import decoder_blocks

log = logging.getLogger(__name__)

ACTIVATION_BUDGET_VARIABLE = "LETHE_ACTIVATION_BUDGET_MB"
# The budget of a CPU worker where LETHE_ACTIVATION_BUDGET_MB is unset (module docstring).
CPU_BUDGET_MB = 256


def activation_budget_bytes(device_type: str = "cpu") -> int | None:
    """LETHE_ACTIVATION_BUDGET_MB in bytes for an LM on `device_type`; None when 0 (no budget); unset, CPU_BUDGET_MB
    on a CPU and None elsewhere. ValueError naming a bad value."""
    raw = os.environ.get(ACTIVATION_BUDGET_VARIABLE, "").strip()
    if not raw:
        return CPU_BUDGET_MB * 2**20 if device_type == "cpu" else None
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


def layers_to_checkpoint(lm: PreTrainedModel, tokens: int) -> list[int]:
    """The decoder layers (0-based, spread evenly) to checkpoint so that a step on `tokens` tokens fits the budget:
    none without a budget or within it, every layer where even that does not fit.

    With k of the L layers checkpointed the step keeps (L − k) layers' activations and, for each of the k, its input
    (a hidden-size vector per token): the smallest k with that at most the budget.
    """
    budget = activation_budget_bytes(lm.device.type)
    full = activation_bytes(lm, tokens)
    if budget is None or full <= budget:
        return []
    layers = int(lm.config.num_hidden_layers)
    per_layer = full / layers
    kept_input = tokens * int(lm.config.hidden_size) * 4
    needed = math.ceil((full - budget) / max(per_layer - kept_input, 1.0))
    count = min(layers, needed)  # at least 1: the step is over the budget
    return sorted({(j * layers) // count for j in range(count)})


@contextlib.contextmanager
def checkpointed(lm: PreTrainedModel, layers: Sequence[int]) -> Iterator[list[int]]:
    """Within the block, `lm`'s decoder layers numbered in `layers` run with activation checkpointing (none when it
    is empty, or when the LM does not support it); yields the layers that do."""
    if not layers:
        yield []
        return
    if not lm.supports_gradient_checkpointing:
        log.warning("%s does not support activation checkpointing: training without it", type(lm).__name__)
        yield []
        return
    enable = getattr(lm, "activation_checkpointing_enable", None)  # transformers ≥ 5.18; the old name before
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    chosen = set(layers)
    # transformers turns it on for every layer; each layer reads its own flag on every forward.
    for index, block in enumerate(decoder_blocks(lm)):
        setattr(block, "gradient_checkpointing", index in chosen)  # noqa: B010 (nn.Module's typed __setattr__)
    try:
        yield sorted(chosen)
    finally:
        disable = getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable
        disable()
