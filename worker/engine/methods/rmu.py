"""Representation misdirection for unlearning (RMU; Li et al., 'The WMDP Benchmark', arXiv 2403.03218).

At decoder block `layer` (its output, see `blocks`), forget activations are pushed towards c·u, u a fixed random
unit vector, and retain activations are held at the reference's (the LM with its adapter disabled):

    loss = mean_f |h_θ(x_f) − c·u|²/d + α · mean_r |h_θ(x_r) − h_ref(x_r)|²/d

over every real (attended) token of each sequence, padding excluded, then over sequences. u has independent
entries uniform in [0, 1), normalised to unit length, drawn from the run's seed. Only `trained_layers` (by default
layer−2..layer, as Li et al.) carry LoRA adapters: see `RMUParams.adapted_layers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lethe.methods import RMUParams
from worker.engine.lm.blocks import block_outputs, decoder_block
from worker.engine.methods.losses import activation_distance, retain_batch
from worker.engine.training.batches import Batch
from worker.engine.training.objective import LossTerms, Objective, Step, TrainContext


def random_unit_vector(size: int, seed: int) -> torch.Tensor:
    """u: independent entries uniform in [0, 1), normalised to length 1 (Li et al.), from `seed`."""
    u = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


class RMU(Objective):
    """Forget: steer layer activations to c·u; retain: α·distance to the reference's activations."""

    def __init__(self, params: RMUParams, seed: int) -> None:
        self.params = params
        self.seed = seed
        self.uses_retain = params.alpha > 0
        self.block: torch.nn.Module | None = None
        self.control = torch.zeros(0)

    def prepare(self, context: TrainContext) -> None:
        config = context.lm.config
        self.block = decoder_block(context.lm, self.params.steered_layer(config.num_hidden_layers))
        device = next(context.lm.parameters()).device
        u = random_unit_vector(config.hidden_size, self.seed)
        self.control = (self.params.steering_coefficient * u).to(device)

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
