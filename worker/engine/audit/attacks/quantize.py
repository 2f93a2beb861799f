"""Quantization: does rounding the weights undo a forgetting delta too small to survive it?

Zhang et al. ("Catastrophic failure of LLM unlearning via quantization", arXiv 2410.16454) find that unlearning
changes weights so little that 4-bit quantization maps the unlearned and the original weights to the same values,
and the knowledge returns (8-bit, with finer steps, keeps more of the change). Here the adapter is merged into the
LM's weights and every linear weight inside the decoder blocks is fake-quantized with round-to-nearest (RTN:
quantized, then dequantized back to its float dtype); the split is scored on that LM.

Schemes (params.schemes):
- int8: symmetric per output channel: scale = max|w_row| / 127, q = round(w / scale) clamped to [-127, 127].
- int4: symmetric per group of params.group_size consecutive input weights of a row: scale = max|w_group| / 7,
  q = round(w / scale) clamped to [-8, 7]; a row whose length the group size does not divide ends in a shorter group.
Rounding is torch.round (half to even); an all-zero row or group stays zero.

RTN erases a weight's change only if the weight stays within half a step of the grid point it rounded to before.
Weights spread between grid points move a whole step with a chance proportional to their change, so on average
a small change survives; it is erased outright where the weights before forgetting sit on (or near) the grid, as
in an LM dequantized from a checkpoint quantized the same way.

Choices:
- Only the decoder blocks' linear weights (torch's Linear, GPT-2's Conv1D) are quantized, not the embeddings, the
  LM head or the norms: the adapter changes nothing else, and weight-only quantizers (GPTQ, AWQ, bitsandbytes)
  usually keep the embeddings and the head in higher precision (SmolLM2 ties its head to the embeddings).
- Quantization also damages what was never forgotten, so each variant's `before` is the LM before forgetting under
  the same quantization: recovery compares like with like (a scheme that wrecks the task even before forgetting
  comes out inconclusive, not robust). The outcome's `before` is the unquantized LM before forgetting.
- Passes: 2 + 2 per scheme.
- No copy of the LM (the base LM is the worker's one copy, shared with the job's adapter): `quantized_lm` merges
  and quantizes one linear layer at a time, in place, right before that layer runs, and puts its original weight
  back right after, so a pass holds the LM's weights plus one layer's. Each scored batch redoes the merge and the
  rounding, which is what the memory costs in time. The LoRA layers are switched off meanwhile (their update is
  in the merged weight), as merge_and_unload leaves none; the weights the LM runs on are the same numbers
  merge_and_unload and the rounding of a copy gave (peft's own `get_delta_weight`, added as its merge adds it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.pytorch_utils import Conv1D

from lethe.attacks import AttackParams, QuantizeParams
from lethe.rows import Row
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackOutcome, RowScores, Variant
from worker.engine.lm.blocks import decoder_blocks
from worker.engine.lm.lora import LoraState

# A scale of 0 (an all-zero row or group) would give 0/0; any positive scale maps zeros to zeros.
_TINY = torch.finfo(torch.float32).tiny


def fake_quantize_int8(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] rounded to symmetric int8 per output channel and dequantized."""
    w = weight.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=_TINY)
    return (torch.round(w / scale).clamp(-127, 127) * scale).to(weight.dtype)


def fake_quantize_int4(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """`weight` [out, in] rounded to symmetric int4 per group of `group_size` input weights and dequantized."""
    rows, columns = weight.shape
    # Zero padding fills the last group of each row; zeros change no group's max and are cut off again.
    padded = torch.nn.functional.pad(weight.float(), (0, -columns % group_size))
    groups = padded.view(rows, -1, group_size)
    scale = (groups.abs().amax(dim=2, keepdim=True) / 7).clamp(min=_TINY)
    dequantized = torch.round(groups / scale).clamp(-8, 7) * scale
    return dequantized.view(rows, -1)[:, :columns].to(weight.dtype)


def quantizer(scheme: str, group_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fake-quantizer of `scheme` (int8 or int4)."""
    if scheme == "int8":
        return fake_quantize_int8
    if scheme == "int4":
        return lambda weight: fake_quantize_int4(weight, group_size)
    raise ValueError(f"unknown quantization scheme {scheme!r}; allowed: int8, int4")


def quantize(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """The split's score with the adapter merged and the decoder blocks' weights fake-quantized, per scheme."""
    if not isinstance(params, QuantizeParams):
        raise TypeError(f"quantize takes QuantizeParams, got {type(params).__name__}")
    rows = ctx.split(params.split)
    passes = 2 + 2 * len(params.schemes)
    before = ctx.reference_score(rows, "before")
    ctx.on_progress(1 / passes)
    after_forgetting = ctx.reference_score(rows, "forgotten")
    ctx.on_progress(2 / passes)
    variants = []
    for i, scheme in enumerate(params.schemes):
        quantize_weight = quantizer(scheme, params.group_size)
        quantized_before = _quantized_score(ctx, rows, ctx.before, quantize_weight)
        ctx.on_progress((3 + 2 * i) / passes)
        quantized_forgotten = _quantized_score(ctx, rows, ctx.forgotten, quantize_weight)
        ctx.on_progress((4 + 2 * i) / passes)
        variants.append(Variant(scheme, after_attack=quantized_forgotten, before=quantized_before))
    return ctx.outcome(params.split, rows, before, after_forgetting, variants)


@contextlib.contextmanager
def quantized_lm(peft_lm: PeftModel, quantize_weight: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[PeftModel]:
    """`peft_lm` running as the LM with its adapter merged and its decoder blocks' linear weights quantized, inside.

    Each linear layer in the decoder blocks (and each LoRA layer outside them, merged but not quantized) gets a
    forward pre-hook that saves its weight and writes the merged, quantized one, and a forward hook that writes
    the saved weight back; LoRA is disabled. On exit the hooks go, a layer left changed (an exception inside it)
    gets its weight back, and every requires_grad flag is as it was.
    """
    swapped: dict[torch.nn.Module, torch.Tensor] = {}  # a layer running changed -> its original weight

    def swap_in(layer: torch.nn.Module, quantize: bool) -> None:
        if layer in swapped:
            raise RuntimeError("a layer ran again before its own forward pass ended; quantized_lm cannot nest")
        weight = _weight(layer).detach()
        swapped[layer] = weight.clone()
        merged = weight
        if isinstance(layer, LoraLayer):
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    merged = merged + cast(Any, layer).get_delta_weight(adapter)  # what peft's merge adds
        if quantize and isinstance(_holder(layer), Conv1D):
            # GPT-2's Conv1D stores its weight as [in, out]: quantized per output channel as a Linear's [out, in].
            merged = quantize_weight(merged.T).T
        elif quantize:
            merged = quantize_weight(merged)
        weight.copy_(merged)

    def swap_out(layer: torch.nn.Module) -> None:
        _weight(layer).detach().copy_(swapped.pop(layer))

    # peft's disable_adapter makes the adapters trainable again on its way out: the flags are put back after it.
    flags = [(parameter, parameter.requires_grad) for parameter in peft_lm.parameters()]
    handles = []
    for layer, quantize in _merged_layers(peft_lm):
        handles.append(layer.register_forward_pre_hook(lambda module, _args, q=quantize: swap_in(module, q)))
        handles.append(layer.register_forward_hook(lambda module, _args, _output: swap_out(module)))
    try:
        with torch.no_grad(), peft_lm.disable_adapter():
            yield peft_lm
    finally:
        for handle in handles:
            handle.remove()
        for layer, original in swapped.items():
            _weight(layer).detach().copy_(original)
        swapped.clear()
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _holder(layer: torch.nn.Module) -> torch.nn.Module:
    """The layer that holds the weight `layer` runs with: itself, or for a LoRA layer the layer it wraps."""
    return layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    """The weight `layer` runs with: its own, or for a LoRA layer the weight of the layer it wraps."""
    holder = _holder(layer)
    weight = holder.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(holder).__name__} has no weight tensor")
    return weight


def _merged_layers(peft_lm: PeftModel) -> list[tuple[torch.nn.Module, bool]]:
    """The layers `quantized_lm` changes, each with whether it is quantized: the decoder blocks' linear layers
    (quantized, through their LoRA layer where they have one), and LoRA layers outside the blocks (merged only)."""
    layers: list[tuple[torch.nn.Module, bool]] = []
    inside: set[torch.nn.Module] = set()  # the modules of a LoRA layer: its base layer and its A and B matrices
    for module in decoder_blocks(peft_lm).modules():
        if isinstance(module, BaseTunerLayer):
            inside.update(m for m in module.modules() if m is not module)
            layers.append((module, isinstance(module.get_base_layer(), torch.nn.Linear | Conv1D)))
        elif isinstance(module, torch.nn.Linear | Conv1D) and module not in inside:
            layers.append((module, True))
    in_blocks = {layer for layer, _ in layers}
    for module in peft_lm.modules():
        if isinstance(module, BaseTunerLayer) and module not in in_blocks and module not in inside:
            inside.update(m for m in module.modules() if m is not module)
            layers.append((module, False))
    return layers


def _quantized_score(
    ctx: AuditContext, rows: Sequence[Row], state: LoraState, quantize_weight: Callable[[torch.Tensor], torch.Tensor]
) -> RowScores:
    """The score of `rows` with adapter weights `state`, merged and quantized (`quantized_lm`)."""
    with ctx.using(state), quantized_lm(ctx.peft_lm, quantize_weight) as lm:
        return ctx.score(rows, lm=lm)
