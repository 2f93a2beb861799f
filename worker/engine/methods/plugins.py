"""Plug-ins any ascent-style method can switch on (the PluginParams fields): retain-KL, gradient projection, RNA.

- retain-KL: an extra retain term, weight · KL(π_ref ‖ π_θ) averaged over the retain targets' tokens, π_ref the LM
  before forgetting (the fine-tuned LM after a fine-tune, else the base LM). It is 0 at the first step (π_θ = π_ref).
- Gradient projection, after Geometric-disentanglement Unlearning (Zhou et al., arXiv 2511.17100): the retain
  loss is unchanged to first order iff the update is orthogonal to the retain gradient, so the forget gradient's
  component along it is removed: g_f ← g_f − (⟨g_f, g_r⟩ / ‖g_r‖²)·g_r, with one retain gradient per step (the
  gradient of the step's whole retain term) and all LoRA parameters flattened into one vector. The retain gradient
  itself is still applied. The paper's own code projects in Adam's whitened coordinates; this is the plain
  Euclidean form of the same projection.
- RNA, Random Noise Augmentation (Dang et al., 'Improving LLM Unlearning Robustness via Random Perturbations',
  arXiv 2501.19202): the paper reads forgetting as planting a backdoor (forget tokens as triggers) and retaining
  as the defence, and perturbs the retain representations with Gaussian noise during retaining. Here: N(0, σ²) noise
  on the output of one decoder block, in the trained LM's forward passes on retain batches (the reference's passes
  are never perturbed). The noise comes from torch's global generator, which the run seeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from peft import PeftModel

from lethe.methods import MethodParams, PluginParams, relative_layer
from worker.engine.lm.blocks import decoder_block, transformed_block_output
from worker.engine.methods.losses import retain_loss
from worker.engine.training.objective import Plugins, Step


def retain_kl_term(weight: float) -> Callable[[Step], torch.Tensor]:
    """The retain term weight · KL(π_ref ‖ π_θ) on the step's retain batch."""

    def term(step: Step) -> torch.Tensor:
        return weight * retain_loss(step, "kl")

    return term


def project_out_retain(forget_grads: list[torch.Tensor], retain_grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """g_f − (⟨g_f, g_r⟩ / ‖g_r‖²)·g_r over all parameters as one vector; g_f unchanged when g_r = 0."""
    # The sums meet on one device: the adapters of an LM spread over GPUs sit on several (a no-op on one device).
    device = forget_grads[0].device
    pairs = list(zip(forget_grads, retain_grads, strict=True))
    dot = torch.stack([(f.double() * r.double()).sum().to(device) for f, r in pairs]).sum()
    norm2 = torch.stack([r.double().pow(2).sum().to(device) for r in retain_grads]).sum()
    if norm2 == 0:
        return forget_grads
    coefficient = dot / norm2
    return [(f.double() - coefficient.to(r.device) * r.double()).to(f.dtype) for f, r in pairs]


@dataclass(frozen=True)
class BlockNoise:
    """A forward hook: N(0, std²) noise added to the output of decoder block `layer` (None: 7/32 of the depth)."""

    std: float
    layer: int | None = None

    @contextlib.contextmanager
    def __call__(self, lm: PeftModel) -> Iterator[None]:
        layer = self.layer if self.layer is not None else relative_layer(lm.config.num_hidden_layers)
        with transformed_block_output(decoder_block(lm, layer), lambda h: h + self.std * torch.randn_like(h)):
            yield


def build_plugins(params: MethodParams) -> Plugins:
    """The plug-ins `params` switch on (none by default, and none for methods without plug-in params)."""
    plugins = Plugins()
    if not isinstance(params, PluginParams):
        return plugins
    if params.retain_kl_weight > 0:
        plugins.retain_terms.append(retain_kl_term(params.retain_kl_weight))
    if params.project_gradients:
        plugins.gradient_filter = project_out_retain
    if params.rna_noise_std > 0:
        plugins.retain_hooks.append(BlockNoise(params.rna_noise_std, params.rna_layer))
    return plugins
