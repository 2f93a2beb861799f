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

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from worker.engine.attacks.context import AuditContext
from worker.engine.attacks.outcome import AttackNotApplicable, AttackOutcome, Variant
from worker.engine.attacks.params import AttackParams, PatchParams
from worker.engine.attacks.restore import block_of
from worker.engine.data import Row
from worker.engine.methods.blocks import block_outputs, decoder_blocks, transformed_block_output


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

    with ctx.before_lm(), contextlib.ExitStack() as stack:
        captured = {layer: stack.enter_context(block_outputs(blocks[layer])) for layer in layers}
        before = ctx.score(rows)
    ctx.on_progress(1 / passes)
    after_forgetting = ctx.score(rows)
    ctx.on_progress(2 / passes)

    variants = []
    for i, layer in enumerate(layers):
        # Popped: this block's captured outputs are freed after its pass.
        after_attack = _patched_score(ctx, rows, captured.pop(layer), layer)
        variants.append(Variant(f"layer_{layer}", after_attack=after_attack, layer=layer))
        ctx.on_progress((3 + i) / passes)
    return AttackOutcome(
        metric=ctx.metric,
        split=params.split,
        before=before,
        after_forgetting=after_forgetting,
        variants=variants,
        chance=ctx.chance(rows),
    )


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder block whose output nothing reads: returns its input hidden state unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextlib.contextmanager
def _skipped_up_to(blocks: torch.nn.ModuleList, layer: int) -> Iterator[None]:
    """Blocks 0..layer replaced by pass-throughs inside the context.

    Block `layer`'s output is replaced by the captured one, so nothing reads what it and the blocks below it
    compute: skipping them changes no number and saves on average half of each patched pass.
    """
    originals = [blocks[i] for i in range(layer + 1)]
    for i in range(layer + 1):
        blocks[i] = _PassThrough()
    try:
        yield
    finally:
        for i, original in enumerate(originals):
            blocks[i] = original


def _patched_score(ctx: AuditContext, rows: Sequence[Row], outputs: list[torch.Tensor], layer: int) -> float:
    """The forgotten LM's score of `rows` with block `layer`'s output in forward call i replaced by outputs[i]."""
    replacements = iter(outputs)

    def replace(hidden: torch.Tensor) -> torch.Tensor:
        patched = next(replacements, None)
        if patched is None or patched.shape != hidden.shape:
            raise RuntimeError(f"block {layer}: the patched pass does not batch like the capturing pass")
        return patched

    blocks = decoder_blocks(ctx.peft_lm)
    # The block's own output is replaced, so it and every block below it can be skipped; the hook then sits on
    # its stand-in (looked up after the swap).
    with _skipped_up_to(blocks, layer), transformed_block_output(blocks[layer], replace):
        score = ctx.score(rows)
    if next(replacements, None) is not None:
        raise RuntimeError(f"block {layer}: the patched pass made fewer forward calls than the capturing pass")
    return score
