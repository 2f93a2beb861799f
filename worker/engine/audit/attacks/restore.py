"""Parameter restoration: which adapter parameters hold the forgetting, and does undoing them bring the task back?

Hong et al. ("Dissecting fine-tuning unlearning in LLMs", arXiv 2410.06606) put groups of an unlearned LM's
parameters back to their values before unlearning and find that restoring a few (the last layers' MLPs above all)
brings the knowledge back: fine-tuning unlearning changes how knowledge is retrieved, not the knowledge itself.
Here forgetting is the change of the LoRA adapter, so a group is a set of adapter parameters: they take their
values before forgetting, every other adapter parameter keeps its forgotten value, and the split is scored.

LoRA adds B·A (times alpha / rank) to a module's weight. A group holds both matrices of each of its modules (they
share the module's name), so its modules are exactly at their pre-forgetting weights, the others at their
forgotten ones.

Groups (params.groups), by adapter parameter name as in Llama-family LMs (`...layers.<i>.self_attn|mlp...`):
- last_k: the adapters of the last k decoder blocks (parameters named `...layers.<i>....`, i ≥ num_layers − k);
- attention / mlp: the adapters of every block's attention (`self_attn`) / MLP (`mlp`) modules;
- per_layer: each decoder block's adapters alone, one variant `layer_<i>` per block.

Choices:
- A group with no adapter parameter (e.g. the last blocks when, as with RMU, only some blocks carry an adapter) is
  skipped. So is a group holding every adapter parameter (last_4 of an LM of 4 blocks or fewer): restoring all of
  it is the LM before forgetting, whose recovery is 1 by construction, not an attack. With no group left the
  attack is not applicable to the adapter.
- `before` and `after_forgetting` are the LM before forgetting and the forgotten LM on the same split; then one
  scoring pass per variant, which starts at the group's first block from the forgotten pass's outputs below it
  (the same numbers: nothing below the group differs from the forgotten LM).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lethe.attacks import AttackParams, RestoreGroup, RestoreParams
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, AttackOutcome, Variant
from worker.engine.audit.replay import captured, replayed
from worker.engine.lm.blocks import block_of, decoder_blocks


@dataclass(frozen=True)
class ParameterGroup:
    """Adapter parameters restored together; `layer` is set for a per-layer group."""

    name: str
    parameters: frozenset[str]
    layer: int | None = None


def parameter_groups(names: Sequence[str], groups: Sequence[RestoreGroup], num_layers: int) -> list[ParameterGroup]:
    """The groups of adapter parameters `names` to restore, in order, without the empty and the all-covering ones."""
    selected: list[ParameterGroup] = []
    for group in groups:
        if group == "per_layer":
            selected += [
                ParameterGroup(f"layer_{i}", frozenset(n for n in names if block_of(n) == i), layer=i)
                for i in range(num_layers)
            ]
        elif group in ("attention", "mlp"):
            marker = "self_attn" if group == "attention" else "mlp"
            selected.append(ParameterGroup(group, frozenset(n for n in names if marker in n)))
        else:
            first = num_layers - int(group.removeprefix("last_"))
            last_blocks = frozenset(n for n in names if (block := block_of(n)) is not None and block >= first)
            selected.append(ParameterGroup(group, last_blocks))
    return [g for g in selected if 0 < len(g.parameters) < len(names)]


def restore(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """The split's score with each group of adapter parameters back at its value before forgetting."""
    if not isinstance(params, RestoreParams):
        raise TypeError(f"restore takes RestoreParams, got {type(params).__name__}")
    groups = parameter_groups(list(ctx.forgotten), params.groups, ctx.num_layers)
    if not groups:
        raise AttackNotApplicable(
            f"none of the groups {', '.join(params.groups)} holds some but not all of the adapter's parameters"
        )
    rows = ctx.split(params.split)
    passes = 2 + len(groups)
    before = ctx.reference_score(rows, "before")
    ctx.on_progress(1 / passes)
    # Below a group's first block the restored LM computes what the forgotten one does: the forgotten pass keeps
    # the outputs of the block under each group's first, and the group's pass starts from them (audit/replay.py).
    blocks = decoder_blocks(ctx.peft_lm)
    starts = {group.name: _first_block(group) for group in groups}
    with captured(blocks, [start - 1 for start in starts.values() if start > 0]) as forgotten_outputs:
        after_forgetting = ctx.score(rows)
    ctx.on_progress(2 / passes)
    variants = []
    for i, group in enumerate(groups):
        # Only the dict's entries are new: the tensors are the forgotten and before states' own.
        state = {name: ctx.before[name] if name in group.parameters else value for name, value in ctx.forgotten.items()}
        start = starts[group.name]
        with ctx.using(state), _replayed_below(blocks, start, forgotten_outputs):
            variants.append(Variant(group.name, after_attack=ctx.score(rows), layer=group.layer))
        ctx.on_progress((3 + i) / passes)
    return ctx.outcome(params.split, rows, before, after_forgetting, variants)


def _first_block(group: ParameterGroup) -> int:
    """The lowest block holding one of the group's parameters; 0 when one of them sits in no block."""
    blocks = [block_of(name) for name in group.parameters]
    return 0 if any(block is None for block in blocks) else min(block for block in blocks if block is not None)


def _replayed_below(
    blocks: torch.nn.ModuleList, start: int, outputs: dict[int, list[torch.Tensor]]
) -> contextlib.AbstractContextManager[None]:
    """Passes that start at block `start` from the forgotten LM's outputs of the block below (none to skip at 0)."""
    return replayed(blocks, start - 1, outputs[start - 1]) if start > 0 else contextlib.nullcontext()
