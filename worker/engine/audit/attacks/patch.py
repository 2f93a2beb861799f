"""Activation patching: do the forgotten LM's later blocks still answer from a pre-forgetting representation?

Hong et al. ("Dissecting fine-tuning unlearning in LLMs", arXiv 2410.06606) patch activations of the LM before
unlearning into the unlearned LM and find the knowledge comes back: unlearning changes how knowledge is retrieved,
mostly in the last layers. Here, for each selected decoder block l, the output of block l (the hidden state at every
position) is replaced by the pre-forgetting LM's output of block l on the same input, the forgotten LM runs on with
its own blocks after l, and the split is scored. Full recovery at block l means the forgotten blocks after l still
turn the pre-forgetting state into the answer: whatever forgetting did happens at or before block l.

How: forward hooks on the decoder blocks of ctx.peft_lm. One scoring pass under the before weights captures every
selected block's output, one tensor per forward call (one per scoring batch) in call order, and gives `before`; then
each block gets one pass under the forgotten weights whose hook returns the captured output of the same call. The
scorer batches the same rows with the same batch size identically in both passes (a shape mismatch raises).
Passes: 2 + one per block.

Choices:
- Only blocks from the first adapted block (a block carrying an adapter) up to, not including, the last one are
  patched, those in params.layers too. Patching a block after which none is adapted (always the last block: the
  final norm and the LM head carry no adapter) gives the LM before forgetting exactly, recovery 1 by construction;
  patching a block before the first adapted one changes nothing, recovery 0 by construction, and costs a pass.
  With no block left the attack is not applicable to the adapter; a block the LM does not have is a ValueError.
- The captured outputs stay in memory until their block's pass (then freed): tokens scored × hidden size × 4 bytes
  per block, e.g. 2.3 kB per token per block for SmolLM2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lethe.attacks import AttackParams, PatchParams
from lethe.rows import Row
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, AttackOutcome, Variant
from worker.engine.audit.replay import captured, replayed
from worker.engine.lm.blocks import block_of, decoder_blocks


def patched_blocks(requested: Sequence[int] | None, adapted: set[int], num_layers: int) -> list[int]:
    """The blocks to patch: those requested (None = every block) from the first adapted block to before the last."""
    if requested is not None:
        missing = [layer for layer in requested if layer >= num_layers]
        if missing:
            raise ValueError(
                f"patch layers {missing} do not exist: the LM has {num_layers} decoder blocks (0-{num_layers - 1})"
            )
    if not adapted:
        return []
    candidates = range(num_layers) if requested is None else requested
    return [layer for layer in candidates if min(adapted) <= layer < max(adapted)]


def patch(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """The split's score with each block's output replaced by the pre-forgetting LM's."""
    if not isinstance(params, PatchParams):
        raise TypeError(f"patch takes PatchParams, got {type(params).__name__}")
    adapted = {block for name in ctx.forgotten if (block := block_of(name)) is not None}
    layers = patched_blocks(params.layers, adapted, ctx.num_layers)
    if not layers:
        requested = "every block" if params.layers is None else f"blocks {params.layers}"
        raise AttackNotApplicable(
            f"no block to patch among {requested}: patching means something only from the first block with an "
            f"adapter up to before the last (blocks with an adapter: {sorted(adapted)})"
        )
    rows = ctx.split(params.split)
    blocks = decoder_blocks(ctx.peft_lm)
    passes = 2 + len(layers)

    with ctx.before_lm(), captured(blocks, layers) as outputs:
        before = ctx.score(rows)
    ctx.on_progress(1 / passes)
    after_forgetting = ctx.reference_score(rows, "forgotten")
    ctx.on_progress(2 / passes)

    variants = []
    for i, layer in enumerate(layers):
        # Popped: this block's captured outputs are freed after its pass.
        after_attack = _patched_score(ctx, rows, outputs.pop(layer), layer)
        variants.append(Variant(f"layer_{layer}", after_attack=after_attack, layer=layer))
        ctx.on_progress((3 + i) / passes)
    return ctx.outcome(params.split, rows, before, after_forgetting, variants)


def _patched_score(ctx: AuditContext, rows: Sequence[Row], outputs: list[torch.Tensor], layer: int) -> float:
    """The forgotten LM's score of `rows` with block `layer`'s output in forward call i replaced by outputs[i]."""
    with replayed(decoder_blocks(ctx.peft_lm), layer, outputs):
        return ctx.score(rows)
