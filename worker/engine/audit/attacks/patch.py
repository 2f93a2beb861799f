"""Activation patching (a diagnostic): which component's activations, in which layers, carry the forgetting?

Hong et al. ("Dissecting fine-tuning unlearning in LLMs", arXiv 2410.06606) patch the MLP coefficients (the input of the
MLP's output projection, Llama's `down_proj`: how much of each value vector the MLP writes) and the attention outputs of
the LM before unlearning into the unlearned LM, over windows of layers, and find the coefficients of the last layers
bring the knowledge back: unlearning changes how knowledge is retrieved. Here, for each component and window, the
forgotten LM runs on the split's rows with that component's activations in the window's blocks replaced by the pre-
forgetting LM's on the same input (every position), and the KRS on the answer logits is measured (audit/diagnostics.py).

Components (params.components), by module of block l in the family's layout (`architecture.BlockLayout`):
- mlp_coefficients: the input of the MLP's output projection (down_proj in Llama-like LMs and Phi-3, dense_4h_to_h
  in GPT-NeoX, the MLP's c_proj in GPT-2; a forward pre-hook; with a LoRA adapter on it, the base weight and the
  adapter both see the patched input);
- attention_output: the output of the attention module (self_attn, GPT-NeoX's attention, GPT-2's attn: the output
  of its output projection, the term the attention adds to the residual stream).
The residual stream itself is never replaced: patching a block's whole output gives the LM before forgetting from
that block up (recovery by construction at the last adapted block), which says nothing about where forgetting sits.

Windows (params.window, params.layers): `diagnostics.windows`: by default windows of 5 layers that tile the blocks
(0-4, 5-9, ...); `layers: "all"` gives Hong et al.'s sweep, 5 layers l-2..l+2 around every layer l.

How: one pass of the LM before forgetting captures every patched layer's activations of the component, one tensor
per forward call (one per scoring batch) in call order; each variant's pass under the forgotten weights gets, at
each of its window's modules, the captured activation of the same call. `each_answer_logits` batches the same rows the
same way in every pass (a shape mismatch or a different number of calls raises). The blocks below a window compute
exactly what the forgotten LM does, so a variant's pass starts at its window from the forgotten pass's outputs
(audit/replay.py). The passes before forgetting and of the forgotten LM are the audit's, shared with restore
(`AuditContext.diagnostic_baseline`).

Choices:
- A window wholly below the first adapted block is left out: there the LM before forgetting and the forgotten LM
  compute the same activations, and patching them changes nothing (KRS 0 by construction). With no window left
  the diagnostic does not apply; a layer the LM does not have is a ValueError.
- Captured activations stay in memory for the component's passes: tokens fed × width × 4 bytes per layer (width =
  the MLP's intermediate size for coefficients, the hidden size for attention outputs), e.g. 6.1 kB and 2.3 kB per
  token per layer on SmolLM2. One component is captured at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from lethe.attacks import AttackParams, PatchParams
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import DiagnosticOutcome, DiagnosticVariant, each_answer_logits, windows
from worker.engine.audit.outcome import AttackNotApplicable
from worker.engine.audit.replay import replayed_below
from worker.engine.lm.architecture import BlockLayout, block_layout, describe

# Whether each component is its module's input (True) or output (False).
COMPONENT_IS_INPUT: dict[str, bool] = {"mlp_coefficients": True, "attention_output": False}


def component_path(layout: BlockLayout, component: str) -> str:
    """The module of a decoder block whose input or output is `component`."""
    paths = {"mlp_coefficients": layout.mlp_output, "attention_output": layout.attention}
    return paths[component]


def component_module(block: torch.nn.Module, component: str) -> torch.nn.Module:
    """The module of `block` whose input or output is `component`; AttackNotApplicable if the block has none."""
    try:
        layout = block_layout(block)
    except ValueError as exc:
        raise AttackNotApplicable(f"cannot patch {component}: {exc}") from exc
    return block.get_submodule(component_path(layout, component))


@contextlib.contextmanager
def recorded(
    blocks: torch.nn.ModuleList, component: str, layers: Sequence[int]
) -> Iterator[dict[int, list[torch.Tensor]]]:
    """`component`'s activations in blocks `layers` in every forward call made inside the context, by layer."""
    is_input = COMPONENT_IS_INPUT[component]
    records: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        module = component_module(blocks[layer], component)
        if is_input:

            def pre_hook(_module: torch.nn.Module, args: tuple, record: list[torch.Tensor] = records[layer]) -> None:
                record.append(args[0])

            handles.append(module.register_forward_pre_hook(pre_hook))
        else:

            def hook(
                _module: torch.nn.Module, _args: tuple, output: Any, record: list[torch.Tensor] = records[layer]
            ) -> None:
                record.append(output[0] if isinstance(output, tuple) else output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def patched(blocks: torch.nn.ModuleList, component: str, activations: dict[int, list[torch.Tensor]]) -> Iterator[None]:
    """Forward passes inside take `component` in each block of `activations` from it: call i gets entry i.

    RuntimeError when the passes do not batch like the recording pass (a shape differs, or the number of calls).
    """
    is_input = COMPONENT_IS_INPUT[component]
    handles = []
    remaining = {layer: iter(values) for layer, values in activations.items()}

    def replacement(layer: int, current: torch.Tensor) -> torch.Tensor:
        value = next(remaining[layer], None)
        if value is None or value.shape != current.shape:
            raise RuntimeError(f"block {layer}: the patched pass does not batch like the recording pass")
        return value

    for layer in activations:
        module = component_module(blocks[layer], component)
        if is_input:

            def pre_hook(_module: torch.nn.Module, args: tuple, layer: int = layer) -> tuple:
                return (replacement(layer, args[0]), *args[1:])

            handles.append(module.register_forward_pre_hook(pre_hook))
        else:

            def hook(_module: torch.nn.Module, _args: tuple, output: Any, layer: int = layer) -> Any:
                if isinstance(output, tuple):
                    return (replacement(layer, output[0]), *output[1:])
                return replacement(layer, output)

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if any(next(values, None) is not None for values in remaining.values()):
        raise RuntimeError("the patched pass made fewer forward calls than the recording pass")


def patch(ctx: AuditContext, params: AttackParams) -> DiagnosticOutcome:
    """The KRS of the forgotten LM with each component's activations in each window taken from the LM before
    forgetting."""
    if not isinstance(params, PatchParams):
        raise TypeError(f"patch takes PatchParams, got {type(params).__name__}")
    architecture = describe(ctx.peft_lm)
    adapted = {block for name in ctx.forgotten if (block := architecture.block_of(name)) is not None}
    selected = [w for w in windows(params.window, ctx.num_layers, params.layers) if adapted and w.last >= min(adapted)]
    if not selected:
        raise AttackNotApplicable(
            "no window reaches a block with an adapter: below the first adapted block the LM before forgetting and "
            f"the forgotten LM compute the same activations (blocks with an adapter: {sorted(adapted)})"
        )
    blocks = architecture.blocks
    for component in params.components:
        component_module(blocks[0], component)
    rows = ctx.split(params.split)
    passes = 2 + len(params.components) * (1 + len(selected))
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        ctx.on_progress(done / passes)

    starts = sorted({window.first for window in selected if window.first > 0})
    baseline = ctx.diagnostic_baseline(rows, [start - 1 for start in starts])
    recovery, forgotten_outputs = baseline.recovery, baseline.block_outputs
    for _baseline_pass in range(2):  # before forgetting and forgotten (none where restore already ran them)
        advance()

    layers = sorted({layer for window in selected for layer in range(window.first, window.last + 1)})
    variants = []
    for component in params.components:
        # The pre-forgetting pass runs for the activations it leaves; its logits are dropped batch by batch.
        with ctx.before_lm(), recorded(blocks, component, layers) as activations:
            each_answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit, lambda _row, _logits: None)
        advance()
        for window in selected:
            in_window = {layer: activations[layer] for layer in range(window.first, window.last + 1)}
            with replayed_below(blocks, window.first, forgotten_outputs), patched(blocks, component, in_window):
                errors = each_answer_logits(ctx.peft_lm, ctx.tokenizer, rows, ctx.batch_size, ctx.limit, recovery.error)
            variants.append(DiagnosticVariant(component, window, recovery.score(errors)))
            advance()
        # Freed before the next component's are recorded.
        del activations
    return DiagnosticOutcome(params.split, len(rows), recovery.rows_undefined, variants)
