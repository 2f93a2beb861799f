"""Parameter restoration (a diagnostic): which component of which layers holds the forgetting?

Hong et al. ("Dissecting fine-tuning unlearning in LLMs", arXiv 2410.06606) put the MLP value vectors (the weights of
the MLP's output projection, Llama's `down_proj`: its columns are what the MLP writes to the residual stream) of a
window of layers back to their values before unlearning and find they bring little back: unlearning leaves the stored
values alone and changes how they are retrieved. Here forgetting is the change of the LoRA adapter, so a component's
parameters in a window take their pre-forgetting values (the adapter before forgetting: after the optional fine-tune, or
LoRA's B = 0), every other adapter parameter keeps its forgotten value, and the KRS on the answer logits is measured
(audit/diagnostics.py).

Components (params.components), by the module of a decoder block an adapter parameter belongs to
(`architecture.describe`: the block from the name of the LM's list of blocks, the module from the family's layout):
- value_vectors: the adapters of the MLP's output projection only (down_proj in Llama-like LMs and Phi-3,
  dense_4h_to_h in GPT-NeoX, the MLP's c_proj in GPT-2);
- mlp: those of the whole MLP (Llama: gate, up and down; GPT-2: c_fc and c_proj);
- attention: those of the attention (Llama: q, k, v, o; fused q/k/v and the output projection elsewhere).
LoRA adds B·A (times alpha / rank) to a module's weight; both matrices of a module are restored together, so the
module is exactly at its pre-forgetting weight.

Windows (params.window, params.layers): `diagnostics.windows`: by default windows of 5 layers that tile the blocks
(0-4, 5-9, ...); `layers: "all"` gives Hong et al.'s sweep, 5 layers l-2..l+2 around every layer l.

Choices:
- A (component, window) with no adapter parameter (e.g. outside the blocks RMU adapts) measures nothing (KRS 0 by
  construction) and is left out; so is one holding every adapter parameter (an adapter on down_proj alone, a window
  covering every layer): that is the LM before forgetting, KRS 1 by construction. A component with no window left
  is listed in the outcome's `skipped`; with no variant at all the diagnostic does not apply.
- An adapter on a public base model can be removed outright: whoever holds it recovers the base LM without any
  restoration. These numbers say where forgetting changed the LM, not how deep it goes.
- Passes: the LM before forgetting and the forgotten LM once each (once per audit: patch shares them,
  `AuditContext.diagnostic_baseline`), then one per variant, which starts at its window's first block from the
  forgotten pass's outputs below it (audit/replay.py: the same numbers, nothing below the window differs from the
  forgotten LM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from lethe.attacks import AttackParams, RestoreParams
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import DiagnosticOutcome, DiagnosticVariant, Window, each_answer_logits, windows
from worker.engine.audit.outcome import AttackNotApplicable
from worker.engine.audit.replay import replayed_below
from worker.engine.lm.architecture import Architecture, BlockLayout, describe
from worker.engine.lm.lora import LoraState


def component_path(layout: BlockLayout, component: str) -> str:
    """The module of a decoder block whose adapter parameters are `component` (value_vectors, mlp, attention)."""
    paths = {"value_vectors": layout.mlp_output, "mlp": layout.mlp, "attention": layout.attention}
    return paths[component]


def component_parameters(
    architecture: Architecture, names: Sequence[str], component: str, window: Window
) -> frozenset[str]:
    """The adapter parameters among `names` of `component` in the blocks of `window`."""
    path = component_path(architecture.layout, component)
    return frozenset(
        name for name in names if architecture.in_module(name, path) and architecture.block_of(name) in window
    )


def restored_state(
    forgotten: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor], parameters: frozenset[str]
) -> LoraState:
    """The forgotten adapter with `parameters` at their pre-forgetting values (the tensors are theirs, not copies)."""
    return {name: before[name] if name in parameters else value for name, value in forgotten.items()}


def restore(ctx: AuditContext, params: AttackParams) -> DiagnosticOutcome:
    """The KRS of the forgotten LM with each component of each window of layers back at its pre-forgetting value."""
    if not isinstance(params, RestoreParams):
        raise TypeError(f"restore takes RestoreParams, got {type(params).__name__}")
    names = list(ctx.forgotten)
    architecture = describe(ctx.peft_lm)
    selected = windows(params.window, ctx.num_layers, params.layers)
    plan: list[tuple[str, Window, frozenset[str]]] = []
    skipped: dict[str, str] = {}
    for component in params.components:
        groups = [(component, w, component_parameters(architecture, names, component, w)) for w in selected]
        kept = [group for group in groups if 0 < len(group[2]) < len(names)]
        if not kept:
            skipped[component] = (
                "its windows hold every adapter parameter (the LM before forgetting: KRS 1 by construction)"
                if any(group[2] for group in groups)
                else "no window measured holds an adapter parameter of this component"
            )
        plan += kept
    if not plan:
        reasons = "; ".join(f"{component}: {reason}" for component, reason in skipped.items())
        raise AttackNotApplicable(f"no component restores anything: {reasons}")

    rows = ctx.split(params.split)
    passes = 2 + len(plan)
    blocks = architecture.blocks
    # Below a window's first block the restored LM computes what the forgotten one does: the forgotten pass keeps
    # the outputs of the block under each window, and the window's pass starts from them (audit/replay.py).
    starts = sorted({window.first for _, window, _ in plan if window.first > 0})
    baseline = ctx.diagnostic_baseline(rows, [start - 1 for start in starts])
    recovery, forgotten_outputs = baseline.recovery, baseline.block_outputs
    ctx.on_progress(2 / passes)

    variants = []
    for i, (name, window, parameters) in enumerate(plan):
        state = restored_state(ctx.forgotten, ctx.before, parameters)
        with ctx.using(state), replayed_below(blocks, window.first, forgotten_outputs):
            errors = each_answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit, recovery.error)
        variants.append(DiagnosticVariant(name, window, recovery.score(errors)))
        ctx.on_progress((3 + i) / passes)
    return DiagnosticOutcome(params.split, len(rows), recovery.rows_undefined, variants, skipped)
