"""Quantization: does rounding the weights undo a forgetting delta too small to survive it?

Zhang et al. ("Catastrophic failure of LLM unlearning via quantization", arXiv 2410.16454) find that unlearning
changes weights so little that 4-bit quantization maps the unlearned and the original weights to the same values,
and the knowledge returns (8-bit, with finer steps, keeps more of the change). Here the adapter is merged into a
copy of the LM's weights and every linear weight inside the decoder blocks is fake-quantized with round-to-nearest
(RTN: quantized, then dequantized back to its float dtype); the split is scored on that copy.

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
- Passes: 2 + 2 per scheme. One merged copy of the LM exists at a time and is freed after its pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lethe.attacks import AttackParams, QuantizeParams
from lethe.rows import Row
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackOutcome, RowScores, Variant
from worker.engine.lm.blocks import decoder_blocks
from worker.engine.lm.lora import LoraState, load_lora_state

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


def merged_quantized_lm(
    peft_lm: PeftModel, state: LoraState, quantize_weight: Callable[[torch.Tensor], torch.Tensor]
) -> PreTrainedModel:
    """A copy of `peft_lm` with adapter weights `state` merged in and its decoder blocks' linear weights quantized."""
    lm = copy.deepcopy(peft_lm)
    load_lora_state(lm, state)
    # merge_and_unload swaps the LoRA modules inside the blocks for merged plain ones; the block list stays.
    blocks = decoder_blocks(lm)
    merged = lm.merge_and_unload()
    with torch.no_grad():
        for module in blocks.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(quantize_weight(module.weight))
            elif isinstance(module, Conv1D):
                # GPT-2's Conv1D stores its weight as [in, out]: quantized per output channel as a Linear's [out, in].
                module.weight.copy_(quantize_weight(module.weight.T).T)
    merged.eval()
    return merged


def _quantized_score(
    ctx: AuditContext, rows: Sequence[Row], state: LoraState, quantize_weight: Callable[[torch.Tensor], torch.Tensor]
) -> RowScores:
    """The score of `rows` on `merged_quantized_lm` (a copy of the LM, freed on return)."""
    return ctx.score(rows, lm=merged_quantized_lm(ctx.peft_lm, state, quantize_weight))
