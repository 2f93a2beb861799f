"""Where a training run stands after an optimiser step, taken so that a run stopped there can go on as if it never
stopped: the LoRA weights, AdamW's moments, the torch RNG, and the position in the seeded batch order.

Torch's generators are the only global randomness training draws from (LoRA's initialisation, RNA's noise); every
other draw (batch order, retain passes, random labels, refusals) is a `random.Random` seeded by name, recomputed
from the position alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftModel

from worker.engine.lm.lora import LoraState, lora_state

# AdamW's state per parameter index (in the order of the trainable parameters): its step count and moments.
OptimizerState = dict[int, dict[str, torch.Tensor]]


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


def rng_state() -> dict[str, torch.Tensor]:
    """Torch's generator states (uint8 tensors): the CPU's and every CUDA device's."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state |= {f"cuda:{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[f"cuda:{i}"] for i in range(torch.cuda.device_count()) if f"cuda:{i}" in state]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class TrainingSnapshot:
    """A training run after `steps` optimiser steps, `batches_done` of them in epoch `epoch` (a snapshot at the
    epoch's last batch comes before its end-of-epoch evaluation), with the retain stream's pass and the batches
    left in it. Tensors are CPU copies."""

    lora: LoraState
    optimizer: OptimizerState
    rng: dict[str, torch.Tensor]
    steps: int
    epoch: int
    batches_done: int
    retain_passes: int = 0
    retain_pending: list[list[int]] = field(default_factory=list)

    @classmethod
    def take(
        cls,
        peft_lm: PeftModel,
        optimizer: torch.optim.Optimizer,
        steps: int,
        epoch: int,
        batches_done: int,
        retain_passes: int,
        retain_pending: list[list[int]],
    ) -> TrainingSnapshot:
        moments = {
            int(index): {key: _cpu(value) for key, value in state.items()}
            for index, state in optimizer.state_dict()["state"].items()
        }
        return cls(
            lora={name: _cpu(t) for name, t in lora_state(peft_lm).items()},
            optimizer=moments,
            rng=rng_state(),
            steps=steps,
            epoch=epoch,
            batches_done=batches_done,
            retain_passes=retain_passes,
            retain_pending=[list(batch) for batch in retain_pending],
        )

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Put the moments back into a fresh AdamW over the same parameters (its hyperparameters stay its own)."""
        optimizer.load_state_dict({"state": self.optimizer, "param_groups": optimizer.state_dict()["param_groups"]})

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by a flat name, for safetensors."""
        tensors = {f"lora/{name}": t for name, t in self.lora.items()}
        tensors |= {f"optimizer/{i}/{key}": t for i, state in self.optimizer.items() for key, t in state.items()}
        return tensors | {f"rng/{name}": t for name, t in self.rng.items()}

    def fields(self) -> dict[str, Any]:
        """Everything else, for JSON."""
        return {
            "steps": self.steps,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "retain_passes": self.retain_passes,
            "retain_pending": self.retain_pending,
        }

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any]) -> TrainingSnapshot:
        """The inverse of `tensors()` and `fields()`."""
        lora, rng = {}, {}
        optimizer: OptimizerState = {}
        for flat, tensor in tensors.items():
            group, name = flat.split("/", 1)
            if group == "lora":
                lora[name] = tensor
            elif group == "rng":
                rng[name] = tensor
            elif group == "optimizer":
                index, key = name.split("/", 1)
                optimizer.setdefault(int(index), {})[key] = tensor
            else:
                raise ValueError(f"unexpected tensor {flat!r} in a training snapshot")
        return cls(
            lora=lora,
            optimizer=optimizer,
            rng=rng,
            steps=int(fields["steps"]),
            epoch=int(fields["epoch"]),
            batches_done=int(fields["batches_done"]),
            retain_passes=int(fields["retain_passes"]),
            retain_pending=[list(batch) for batch in fields["retain_pending"]],
        )
