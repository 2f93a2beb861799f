"""LoRA adapters on an LM: attach them to the LM in place for the length of a job and take them out again, take,
put back or unfreeze their weights, and hold a frozen copy of them as the reference LM of a training run.

A worker keeps one copy of its base LM's weights (`load.BaseLMCache`): a job does not copy it, it injects its LoRA
layers into that very module (`attached_lora`, `attached`) and peft's `unload` takes them out again on the way out,
whatever happened, so that the next job gets the base LM exactly as it was loaded.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from worker.engine.lm.architecture import describe

# The adapter's weights by their parameter names in the PeftModel.
LoraState = dict[str, torch.Tensor]

# peft's name for the adapter a PeftModel is created with: the one Lethe trains, stores and exports.
TRAINED = "default"
# The second adapter slot a training run may hold: a frozen copy of the trained adapter as it was before the run,
# so that the reference LM costs one more adapter, not a second copy of the base LM's weights.
REFERENCE = "reference"


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter apart from any LM: its peft config and its weights (`lora_state`); `attached_lora` puts it
    back on an LM."""

    config: LoraConfig
    state: LoraState


def lora_config(lm: PreTrainedModel, rank: int, alpha: int, layers: Sequence[int] | None = None) -> LoraConfig:
    """LoRA adapters on every linear layer of `lm` (the output head excluded), or those of `layers`.

    Linear layers are torch's Linear and GPT-2's Conv1D (peft's `all-linear` takes both); Conv1D stores its weight
    as [in, out], which peft must be told (fan_in_fan_out). With `layers`, peft takes `layers_to_transform` only
    with module names (the last names of the decoder blocks' linear layers) and finds the block index after
    `layers_pattern`, the name of the LM's list of blocks (`layers`, GPT-2's `h`).
    """
    architecture = describe(lm)
    target_modules: str | list[str] = "all-linear"
    layers_pattern: str | None = None
    if layers is not None:
        target_modules = sorted({path.rsplit(".", 1)[-1] for path in architecture.linear_paths()})
        layers_pattern = architecture.blocks_name.rsplit(".", 1)[-1]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules,
        layers_to_transform=list(layers) if layers is not None else None,
        layers_pattern=layers_pattern,
        fan_in_fan_out=isinstance(architecture.mlp_output(0), Conv1D),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


class FusedLoraLinear(LoraLinear):
    """peft's LoRA layer on a torch Linear, with the update added inside one matmul: the same sum,
    W x + s · B (A x), computed as `addmm(W x, A x, Bᵀ, alpha=s)` instead of peft's `W x + B(A x) * s`.

    peft's form makes two more passes over the layer's whole output, forward and backward (the scaling and the
    sum). On SmolLM2 a LoRA training step (bench/training_bench.py's, fp32-only AMD EPYC Zen 3, runs
    interleaved) took 86.4 tokens/s fused against 79.9 in peft's form, the same losses; scoring passes, which
    have no backward, ran as fast either way.
    Anything but plain LoRA on plain inputs (merged or disabled adapters, per-row adapter names, DoRA and other
    variants, a LoRA bias, an input whose dtype the adapter's does not match outside autocast) goes to peft's own
    forward. The adapter's parameters, their names and what peft saves are peft's: only the forward differs.
    """

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if args or kwargs or self.disable_adapters or self.merged or self.lora_variant:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter not in self.lora_A:
                continue
            lora_a, lora_b = cast(torch.nn.Linear, self.lora_A[adapter]), cast(torch.nn.Linear, self.lora_B[adapter])
            hidden = lora_a(self.lora_dropout[adapter](self._cast_input_dtype(x, lora_a.weight.dtype)))
            scaling = self.scaling[adapter]
            autocast = torch.is_autocast_enabled(result.device.type)
            if lora_b.bias is not None or not (autocast or result.dtype == hidden.dtype == lora_b.weight.dtype):
                result = result + lora_b(hidden) * scaling  # peft's own sum
                continue
            # result + scaling · hidden Bᵀ, one BLAS call (autocast casts its operands as it casts peft's).
            result = torch.addmm(
                result.reshape(-1, result.shape[-1]),
                hidden.reshape(-1, hidden.shape[-1]),
                lora_b.weight.t(),
                alpha=scaling,
            ).view(result.shape)
        return result.to(dtype)


def fused(config: LoraConfig) -> LoraConfig:
    """`config` with its torch Linear layers taking `FusedLoraLinear` (peft's custom-module mapping, which peft
    neither saves nor needs to load the adapter: a plain peft LoRA elsewhere)."""
    config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    return config


def attach_lora(lm: PreTrainedModel, rank: int, alpha: int, layers: Sequence[int] | None = None) -> PeftModel:
    """Wrap `lm` for good with fresh LoRA adapters (`lora_config`): for an LM the caller owns. A shared LM (the
    cached base) takes them only for a while: `attached_lora`."""
    return _wrapped(lm, lora_config(lm, rank, alpha, layers))


def _wrapped(lm: PreTrainedModel, config: LoraConfig) -> PeftModel:
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix, just noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # peft writes into the config it is given (the expanded target modules, the base's path): a copy of it.
        return get_peft_model(lm, fused(copy.deepcopy(config)))


def attached_lora(
    lm: PreTrainedModel, config: LoraConfig, state: Mapping[str, torch.Tensor] | None = None
) -> contextlib.AbstractContextManager[PeftModel]:
    """`lm` with LoRA adapters of `config` injected in place inside (fresh ones, their A matrices drawn from torch's
    generator, or holding `state`), taken out again on exit as `attached` does."""

    def inject(target: PreTrainedModel) -> PeftModel:
        peft_lm = _wrapped(target, config)
        if state is not None:
            load_lora_state(peft_lm, state)
        return peft_lm

    return attached(lm, inject)


@contextlib.contextmanager
def attached(lm: PreTrainedModel, inject: Callable[[PreTrainedModel], PeftModel]) -> Iterator[PeftModel]:
    """The PeftModel `inject(lm)` makes (peft's `get_peft_model` or `PeftModel.from_pretrained`, which put LoRA
    layers into `lm`'s module tree in place: its weights are shared, not copied) inside; on exit, whatever happened,
    every LoRA layer is taken out again (peft's `unload`, never a merge: the weights are left untouched) and `lm` is
    put back in the train/eval mode and with the requires_grad flags it had. ValueError when `lm` carries LoRA
    layers already (another job's, in this process)."""
    if carries_lora(lm):
        raise ValueError("the LM carries LoRA layers already: it is in use by another job")
    training = lm.training
    flags = [(parameter, parameter.requires_grad) for parameter in lm.parameters()]
    peft_lm: PeftModel | None = None
    try:
        peft_lm = inject(lm)
        yield peft_lm
    finally:
        if peft_lm is not None:
            peft_lm.unload()  # every LoRA layer gives way to the layer it wrapped; peft_config goes too
        _strip_lora(lm)  # what an injection that failed half-way left behind, if any
        lm.train(training)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def carries_lora(lm: torch.nn.Module) -> bool:
    """Whether any module of `lm` is a peft adapter layer."""
    return any(isinstance(module, BaseTunerLayer) for module in lm.modules())


def _strip_lora(lm: torch.nn.Module) -> None:
    """Put back the layer each outermost peft layer in `lm` wraps (what peft's `unload` does, without its tuner)."""
    for name, module in list(lm.named_modules()):
        if not name or not isinstance(module, BaseTunerLayer):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = lm.get_submodule(parent_name)
        if getattr(parent, child, None) is module:  # not already inside a layer put back above
            base_layer = cast(BaseTunerLayer, module).get_base_layer()
            setattr(parent, child, base_layer)
    if "peft_config" in vars(lm):
        del lm.peft_config


def _lora_parameters(peft_lm: PeftModel, adapter: str = TRAINED) -> dict[str, torch.nn.Parameter]:
    """The parameters of one adapter slot, e.g. `...q_proj.lora_A.default.weight` for the trained one."""
    return {name: p for name, p in peft_lm.named_parameters() if f".{adapter}." in name and ".lora_" in name}


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
    """Freeze every LoRA parameter but those of the decoder blocks' module at `module`, a path inside a block
    (e.g. `describe(lm).layout.mlp_output`: the MLP's output projection, down_proj in Llama).

    The frozen adapters keep their values (LoRA's zero B at initialisation: they leave the LM unchanged).
    ValueError when the LM has no adapter on such a module.
    """
    architecture = describe(peft_lm)
    parameters = _lora_parameters(peft_lm)
    kept = {name for name in parameters if architecture.in_module(name, module)}
    if not kept:
        raise ValueError(f"the LM has no LoRA adapter on a {module} module of its decoder blocks")
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


@contextlib.contextmanager
def reference_adapter(peft_lm: PeftModel, state: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Inside, `peft_lm` holds `state` (a `lora_state` of its trained adapter) in a frozen second adapter slot that
    `reference_lm` activates; None = no slot, the reference is the base LM. The slot is deleted on exit, so nothing
    saved afterwards (the exported adapter) carries it, and the trained adapter stays the active one throughout."""
    if state is None:
        yield
        return
    if REFERENCE in peft_lm.peft_config:
        raise ValueError("the LM already holds a reference adapter")
    trained = _lora_parameters(peft_lm)
    if set(trained) != set(state):
        raise ValueError("the reference state is not a state of this LM's trained adapter")
    flags = {name: p.requires_grad for name, p in trained.items()}
    peft_lm.add_adapter(REFERENCE, copy.deepcopy(peft_lm.peft_config[TRAINED]))
    slot = _lora_parameters(peft_lm, REFERENCE)
    names = {name.replace(f".{REFERENCE}.", f".{TRAINED}."): name for name in slot}
    with torch.no_grad():
        for name, reference_name in names.items():
            slot[reference_name].copy_(state[name])
            slot[reference_name].requires_grad_(False)
    _restore_flags(trained, flags)
    try:
        yield
    finally:
        peft_lm.delete_adapter(REFERENCE)


@contextlib.contextmanager
def reference_lm(peft_lm: PeftModel) -> Iterator[PeftModel]:
    """`peft_lm` as its reference LM, without gradients: the reference slot active where `reference_adapter` put
    one, otherwise every adapter disabled (the base LM)."""
    with torch.no_grad():
        if REFERENCE not in peft_lm.peft_config:
            with peft_lm.disable_adapter():
                yield peft_lm
            return
        # peft's set_adapter makes the active adapter trainable and the others not; undo that on the way back.
        trained = _lora_parameters(peft_lm)
        flags = {name: p.requires_grad for name, p in trained.items()}
        peft_lm.set_adapter(REFERENCE)
        try:
            yield peft_lm
        finally:
            peft_lm.set_adapter(TRAINED)
            for parameter in _lora_parameters(peft_lm, REFERENCE).values():
                parameter.requires_grad_(False)
            _restore_flags(trained, flags)


def _restore_flags(parameters: Mapping[str, torch.nn.Parameter], flags: Mapping[str, bool]) -> None:
    for name, parameter in parameters.items():
        parameter.requires_grad_(flags[name])
