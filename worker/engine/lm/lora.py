"""LoRA adapters on an LM: attach fresh ones, and take, put back or unfreeze their weights."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

# The adapter's weights by their parameter names in the PeftModel.
LoraState = dict[str, torch.Tensor]


def attach_lora(lm: PreTrainedModel, rank: int, alpha: int, layers: Sequence[int] | None = None) -> PeftModel:
    """Wrap `lm` with fresh LoRA adapters on every linear layer (the output head excluded), or those of `layers`."""
    target_modules: str | list[str] = "all-linear"
    if layers is not None:
        # peft takes `layers_to_transform` only with module names: those of every linear layer but the head.
        head = lm.get_output_embeddings()
        target_modules = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in lm.named_modules()
                if isinstance(m, torch.nn.Linear) and m is not head
            }
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules,
        layers_to_transform=list(layers) if layers is not None else None,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix, just noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(lm, config)


def _lora_parameters(peft_lm: PeftModel) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in peft_lm.named_parameters() if "lora_" in name}


def lora_state(peft_lm: PeftModel) -> LoraState:
    """A detached copy of the adapter's parameters, keyed by their names in `peft_lm`."""
    return {name: p.detach().clone() for name, p in _lora_parameters(peft_lm).items()}


def load_lora_state(peft_lm: PeftModel, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` into the adapter's parameters (every adapter parameter must be in it)."""
    parameters = _lora_parameters(peft_lm)
    missing = sorted(set(parameters) - set(state))
    if missing:
        raise ValueError(f"LoRA state lacks {len(missing)} adapter parameters, e.g. {missing[0]}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])


def train_only_modules(peft_lm: PeftModel, module: str) -> None:
    """Freeze every LoRA parameter but those of the linear layers named `module` (e.g. down_proj).

    The frozen adapters keep their values (LoRA's zero B at initialisation: they leave the LM unchanged).
    ValueError when the LM has no adapter on such a layer.
    """
    parameters = _lora_parameters(peft_lm)
    kept = {name for name in parameters if f".{module}.lora_" in name}
    if not kept:
        raise ValueError(f"the LM has no LoRA adapter on a {module} layer")
    for name, parameter in parameters.items():
        parameter.requires_grad_(name in kept)


@contextlib.contextmanager
def all_lora_trainable(peft_lm: PeftModel) -> Iterator[None]:
    """Every LoRA parameter trainable inside; each one's requires_grad flag as it was on exit."""
    lora = list(_lora_parameters(peft_lm).values())
    flags = [p.requires_grad for p in lora]
    for parameter in lora:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for parameter, flag in zip(lora, flags, strict=True):
            parameter.requires_grad_(flag)
