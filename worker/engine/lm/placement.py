"""Where a worker puts a base LM and in which dtype: the CPU, one GPU, or the GPUs of its host when one does not
hold the LM; and the words a job records for it (its device and precision).

LETHE_WORKER_GPUS (default 1) is how many of the visible GPUs one worker spreads an LM over, read here and nowhere
else, like LETHE_PRECISION in `precision.py`. With 1 the whole LM goes to `cuda:0`; with more, transformers and
accelerate assign whole decoder layers to the GPUs (`spread_device_map`) and hooks move the hidden states from one
GPU to the next. This is model parallelism on one host: the layers run one after another, so one GPU computes at a
time while the others hold their layers. It lets a worker run an LM larger than one GPU, not run one faster; more
jobs at once take more workers on the broker (one per GPU, or per group of GPUs, on as many hosts as there are).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

from worker.engine.precision import mixed_precision_enabled

WORKER_GPUS_VARIABLE = "LETHE_WORKER_GPUS"

# The share of each GPU's memory an LM spread over several GPUs may fill with its weights. The rest is headroom for
# what a job adds on top of the weights: the CUDA context and the allocator's slack (1–2 GB); the activations of one
# batch at the layers a GPU holds, kept for the backward pass; LoRA weights, their gradients and AdamW's two moments
# (fp32, about 1% of the weights at rank 8); on the GPU of the embeddings, the logits of a batch and their
# log-softmax (8 rows × 512 tokens × 128,256 vocabulary × 4 B = 2.1 GB each) and, while scoring, the fp32 copy of
# the LM head (`precision.full_precision`: 1.05 GB for Llama-3.2-1B, 4.2 GB for a 70B's 128,256 × 8,192). On an
# 80 GB GPU 30% is 24 GB, enough for those at the default batch sizes; on 24 GB GPUs large batches may not fit.
# A rule of thumb, not a bound computed from the batch: a job that runs out of memory fails with its error.
WEIGHTS_SHARE = 0.7


class PlacementError(ValueError):
    """The worker's GPUs cannot hold the LM as configured (too few visible, or too little memory)."""


def worker_gpus() -> int:
    """LETHE_WORKER_GPUS (default 1): how many visible GPUs one worker spreads an LM over."""
    raw = os.environ.get(WORKER_GPUS_VARIABLE, "").strip() or "1"
    try:
        gpus = int(raw)
    except ValueError:
        gpus = 0
    if gpus < 1:
        raise PlacementError(f"{WORKER_GPUS_VARIABLE}={raw!r} must be a whole number of GPUs, at least 1")
    return gpus


@dataclass(frozen=True)
class Placement:
    """The devices a worker puts an LM on (the first takes the inputs) and the dtype its weights are stored in."""

    devices: tuple[torch.device, ...]
    dtype: torch.dtype
    # The dtype of the decoder blocks' matmul weights (Linear, Conv1D) where it is not `dtype`: bf16 on a CPU that
    # computes under bf16 autocast, which casts them to bf16 on every call anyway (`block_weights.py`).
    block_matmul_dtype: torch.dtype | None = None

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the device of the embeddings (the only one, unless the LM is spread)."""
        return self.devices[0]

    @property
    def spread(self) -> bool:
        """Whether the LM is spread over several GPUs."""
        return len(self.devices) > 1

    def device_label(self) -> str:
        """The devices with their model: `cuda:0 (NVIDIA H200)`, `cuda:0-3 (4× NVIDIA H100 80GB HBM3)`,
        `cpu (AMD EPYC 7B13)`."""
        first = self.devices[0]
        if first.type != "cuda":
            return f"{first.type} ({_cpu_name()})"
        names = [torch.cuda.get_device_name(device) for device in self.devices]
        if not self.spread:
            return f"{first} ({names[0]})"
        indices = [device.index for device in self.devices]
        consecutive = indices == list(range(indices[0], indices[0] + len(indices)))
        span = f"cuda:{indices[0]}-{indices[-1]}" if consecutive else "cuda:" + ",".join(map(str, indices))
        models = f"{len(names)}× {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        return f"{span} ({models})"

    def precision_label(self) -> str:
        """How a job computes here: `fp32`, `bf16-autocast` (fp32 weights, matmuls in bf16 under autocast),
        `bf16-autocast, bf16 linear weights` (the blocks' linear weights stored in bf16, the rest fp32: a CPU) or
        `bf16-autocast, bf16 weights` (weights stored in bf16, as on a GPU). The LM head scores in fp32 in every
        case (`precision.full_precision`)."""
        weights = _dtype_name(self.dtype)
        if not mixed_precision_enabled(self.input_device):
            return weights
        if self.dtype != torch.float32:
            return f"bf16-autocast, {weights} weights"
        if self.block_matmul_dtype is not None:
            return f"bf16-autocast, {_dtype_name(self.block_matmul_dtype)} linear weights"
        return "bf16-autocast"


def _dtype_name(dtype: torch.dtype) -> str:
    """`fp32`, `bf16`, `fp16` for torch.float32, torch.bfloat16, torch.float16."""
    return str(dtype).removeprefix("torch.").replace("float", "fp").replace("bfp", "bf")


def worker_placement() -> Placement:
    """This worker's placement: without CUDA the CPU, weights in fp32 but the decoder blocks' linear weights in bf16
    where it computes under bf16 autocast (LETHE_PRECISION `auto` on a CPU with native bf16, or `bf16`); otherwise
    the first LETHE_WORKER_GPUS visible GPUs, weights in bf16 where training runs under bf16 autocast (`auto` on a
    GPU with bf16, or `bf16`) and in fp32 otherwise (so `fp32` means fp32 on a GPU too). PlacementError when fewer
    GPUs are visible."""
    gpus = worker_gpus()
    if not torch.cuda.is_available():
        cpu = torch.device("cpu")
        return Placement((cpu,), torch.float32, torch.bfloat16 if mixed_precision_enabled(cpu) else None)
    visible = torch.cuda.device_count()
    if gpus > visible:
        raise PlacementError(
            f"{WORKER_GPUS_VARIABLE}={gpus} but this worker sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    devices = tuple(torch.device("cuda", index) for index in range(gpus))
    dtype = torch.bfloat16 if mixed_precision_enabled(devices[0]) else torch.float32
    return Placement(devices, dtype)


def cuda_report() -> str:
    """What torch says about CUDA here, for a worker that needs it and finds none."""
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
    return f"torch {torch.__version__} with {build}, {torch.cuda.device_count()} GPU(s) visible"


def gpu_memory(placement: Placement) -> list[int]:
    """Total memory in bytes of each of the placement's GPUs (the worker owns them: no other process's share)."""
    return [torch.cuda.get_device_properties(device).total_memory for device in placement.devices]


@dataclass(frozen=True)
class CudaMemory:
    """The CUDA caching allocator's figures over a placement's GPUs, in bytes: held by live tensors (allocated),
    taken from the driver and kept for reuse (reserved: what other processes cannot have), and the GPUs' total."""

    allocated: int
    reserved: int
    total: int


def cuda_memory(placement: Placement) -> CudaMemory | None:
    """This process's CUDA memory on the placement's GPUs, summed; None on the CPU. Safe from any thread: the
    allocator's counters are per process and device."""
    cuda = [device for device in placement.devices if device.type == "cuda"]
    if not cuda:
        return None
    return CudaMemory(
        allocated=sum(torch.cuda.memory_allocated(device) for device in cuda),
        reserved=sum(torch.cuda.memory_reserved(device) for device in cuda),
        total=sum(torch.cuda.get_device_properties(device).total_memory for device in cuda),
    )


def spread_device_map(lm: PreTrainedModel, memory: Sequence[int]) -> dict[str, int]:
    """Which GPU (by index) holds each part of `lm`, for GPUs with `memory` bytes each.

    `lm` may sit on the meta device (built under `accelerate.init_empty_weights` in the dtype it will load in):
    only its structure and sizes count. The planning is transformers' own for `device_map="balanced"`: decoder
    layers are never split (`_no_split_modules`), tied weights (the LM head and the embeddings of SmolLM2 or
    Llama-3.2-1B) share a GPU, and the weights are balanced over the GPUs (about the same share on each, so each
    keeps its headroom), each given at most WEIGHTS_SHARE of its memory. PlacementError when they do not fit:
    nothing goes to the CPU or the disk, where it would run silently slowly. The fit is conservative: accelerate
    keeps room for the largest part (the head or the embeddings) on every GPU but the last.
    """
    budget: dict[int | str, int | str] = {index: int(total * WEIGHTS_SHARE) for index, total in enumerate(memory)}
    no_split = set(lm._no_split_modules or ())
    balanced = get_balanced_memory(lm, max_memory=budget, no_split_module_classes=no_split)
    device_map = infer_auto_device_map(lm, max_memory=balanced, no_split_module_classes=no_split)
    elsewhere = sorted(name for name, device in device_map.items() if not isinstance(device, int))
    if elsewhere:
        weights = sum(p.numel() * p.element_size() for p in lm.parameters())
        raise PlacementError(
            f"the LM's weights ({weights / 1e9:.1f} GB) do not fit in {WEIGHTS_SHARE:.0%} of the memory of "
            f"{len(memory)} GPU(s) ({sum(int(v) for v in budget.values()) / 1e9:.1f} GB; {len(elsewhere)} parts "
            f"left over, e.g. {elsewhere[0]}): raise {WORKER_GPUS_VARIABLE} or use GPUs with more memory"
        )
    return {name: int(device) for name, device in device_map.items()}


def input_device(lm: torch.nn.Module) -> torch.device:
    """The device an LM (or a PeftModel around one) takes its inputs on: its input embeddings' device, the first
    GPU of an LM spread over several (accelerate's hooks move the hidden states on from there, and bring the
    outputs back to it)."""
    embeddings = lm.get_input_embeddings()  # type: ignore[operator]  # every causal LM and PeftModel has it
    return embeddings.weight.device


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"
