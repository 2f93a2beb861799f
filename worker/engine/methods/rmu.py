"""Representation misdirection for unlearning (RMU; Li et al., 'The WMDP Benchmark', arXiv 2403.03218).

At decoder block `layer` (its output, see `blocks`), forget activations are pushed towards c·u, u a fixed random
unit vector, and retain activations are held at the reference's (the LM with its adapter disabled):

    loss = mean_f |h_θ(x_f) − c·u|²/d + α · mean_r |h_θ(x_r) − h_ref(x_r)|²/d

over every real (attended) token of each sequence, padding excluded, then over sequences. u has independent
entries uniform in [0, 1), normalised to unit length, drawn from the run's seed. Only `trained_layers` (by default
layer−2..layer, as Li et al.) carry LoRA adapters: see `RMUParams.adapted_layers`; with trained_modules=down_proj
only the adapters of their MLP's output projection train (WMDP's code updates only down_proj): the API keeps the
Llama name, and in every family it means that projection (`architecture.BlockLayout.mlp_output`: down_proj in
Llama-like LMs and Phi-3, dense_4h_to_h in GPT-NeoX, the MLP's c_proj in GPT-2).

The coefficient c is fixed (`steering_coefficient`) or adaptive (Dang et al., arXiv 2408.06223):
c = β · mean_f mean_t |h_ref(x_f)_t|, the norm of the steered block's output averaged over each forget-train row's
attended tokens, then over rows, in the LM before forgetting (measured once, in `prepare`). The target c·u is then
β times as long as the LM's own forget activations, whatever the LM's scale (β = 5 by default): on SmolLM2-135M
the mean norm at block 7 is about 212 on the addition rows of bench/method_defaults.py (c = 5 · 212 ≈ 1060), so
Li et al.'s c = 6.5 for Zephyr-7B asks for activations 30 times shorter than the LM's own. The Adaptive RMU code
measures the norm on its first forget batch, padding included; this uses every forget-train row and excludes
padding, so that c depends on neither the batch order nor the padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lethe.methods import RMUParams
from worker.engine.lm.architecture import describe
from worker.engine.lm.blocks import block_outputs
from worker.engine.lm.lora import train_only_modules
from worker.engine.lm.placement import input_device
from worker.engine.methods.losses import activation_distance, retain_batch
from worker.engine.training.batches import Batch, collate, examples_of
from worker.engine.training.objective import LossTerms, Objective, Step, TrainContext


def random_unit_vector(size: int, seed: int) -> torch.Tensor:
    """u: independent entries uniform in [0, 1), normalised to length 1 (Li et al.), from `seed`."""
    u = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


# Rows per forward pass when measuring the hidden-state norm (no gradients: memory is small).
NORM_BATCH = 16


def mean_hidden_norm(context: TrainContext, block: torch.nn.Module) -> float:
    """mean over forget-train rows of the mean over their attended tokens of |h|, h = `block`'s output, no grad."""
    lm = context.lm
    device = input_device(lm)
    examples = examples_of(context.tokenizer, context.forget_rows, context.limit)
    per_row: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(examples), NORM_BATCH):
            batch = collate(examples[start : start + NORM_BATCH], context.tokenizer.pad_token_id, device)
            with block_outputs(block) as captured:
                lm(**batch.lm_inputs())
            norms = captured[-1].float().norm(dim=-1)
            mask = batch.attention_mask.to(norms.device, norms.dtype)
            per_row.append((norms * mask).sum(-1) / mask.sum(-1).clamp(min=1))
    return float(torch.cat(per_row).mean())


class RMU(Objective):
    """Forget: steer layer activations to c·u; retain: α·distance to the reference's activations."""

    def __init__(self, params: RMUParams, seed: int) -> None:
        self.params = params
        self.seed = seed
        self.uses_retain = params.alpha > 0
        self.block: torch.nn.Module | None = None
        self.coefficient = 0.0
        self.control = torch.zeros(0)

    def prepare(self, context: TrainContext) -> None:
        """Find the steered block, fix c (measuring the norm before any step when adaptive) and u."""
        config = context.lm.config
        architecture = describe(context.lm)
        self.block = architecture.block(self.params.steered_layer(config.num_hidden_layers))
        fixed = self.params.steering_coefficient
        self.coefficient = (
            fixed if fixed is not None else self.params.steering_scale * mean_hidden_norm(context, self.block)
        )
        u = random_unit_vector(config.hidden_size, self.seed)
        # On the steered block's device: an LM spread over GPUs holds its blocks on different ones.
        self.control = (self.coefficient * u).to(next(self.block.parameters()).device)
        if self.params.trained_modules == "down_proj":
            train_only_modules(context.lm, architecture.layout.mlp_output)

    def activations(self, forward: Callable[[Batch], Any], batch: Batch) -> torch.Tensor:
        """The steered block's output on `batch` in the forward pass `forward(batch)`."""
        if self.block is None:
            raise RuntimeError("prepare() was not called")
        with block_outputs(self.block) as captured:
            forward(batch)
        return captured[-1]

    def losses(self, step: Step) -> LossTerms:
        forget = activation_distance(
            self.activations(step.outputs, step.forget), self.control, step.forget.attention_mask
        )
        if not self.uses_retain:
            return LossTerms(forget=forget)
        batch = retain_batch(step)
        retain = activation_distance(
            self.activations(step.outputs, batch),
            self.activations(step.reference_outputs, batch),
            batch.attention_mask,
        )
        return LossTerms(forget=forget, retain=self.params.alpha * retain)


def build(params: RMUParams, seed: int) -> RMU:
    """The RMU objective for a run seeded with `seed` (which draws u)."""
    return RMU(params, seed)
