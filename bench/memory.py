"""Where a forget job's memory goes: peak RSS on CPU by stage, and peak allocated memory on CUDA, broken down.

CPU (`RssSampler`, `cpu_breakdown`): the resident set is read from /proc every few milliseconds while the job runs,
its peak kept per stage; the breakdown splits the whole job's peak (`VmHWM`) into
- baseline: the process before the base LM is loaded (Python, torch, transformers, peft imported);
- weights: the base LM's parameters and buffers (their bytes, counted once per storage);
- loading and data: what loading left besides the weights (allocator pages not returned, tokenizer, rows);
- lora_and_optimizer: the adapter's parameters, their gradients and AdamW's two moments (4 × the LoRA bytes);
- activations_and_logits: the rest of the peak, above everything resident when the job started: a batch's
  activations kept for the backward pass, logits, scores and the allocator's slack.
CUDA (`cuda_memory_breakdown`): torch's allocator counts exactly, so the job's peak allocated memory is compared
with weights + LoRA + optimizer + the activations of one training batch, measured on their own.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lethe.rows import Row
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attached_lora, lora_config
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective

MB = 2**20
# AdamW keeps two moments per parameter; with the parameter and its gradient, four tensors of the LoRA's size.
LORA_TENSORS_WITH_ADAMW = 4


def rss_mb() -> float:
    """The process's resident set now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / MB


# What `peak_rss_mb` reads, recorded beside its figures: entries measured before it was `VmHWM` read `ru_maxrss`.
PEAK_RSS_SOURCE = "VmHWM"


def peak_rss_mb() -> float:
    """The process's peak resident set so far (/proc's `VmHWM`, the high-water mark of its own memory), in MiB.

    Not `ru_maxrss`: Linux carries that across fork and exec, so a process the bench starts after its own
    scoring and training (which grow the bench to gigabytes) reads the bench's peak as its own. The 2026-12-01 run
    on a Zen 5 EPYC read 3,415 MB for the memory step's job and the audit's, both of whose sampled stages stayed
    under 1,450 MB. `VmHWM` belongs to the address space exec creates, so it starts from nothing.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line")


class RssSampler:
    """A thread that samples the resident set every `interval_s` and keeps the peak of each stage (`stage`)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.stage = "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, stage = rss_mb(), self.stage
            self.peaks[stage] = max(self.peaks.get(stage, 0.0), rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters and buffers, each storage once (tied weights are one tensor)."""
    storages: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def lora_bytes(base: LoadedLM, rank: int, alpha: int, layers: Sequence[int] | None = None) -> int:
    """Bytes of the parameters of a LoRA adapter (`lora_config`) on `base`, counted on the base LM itself."""
    with attached_lora(base.lm, lora_config(base.lm, rank, alpha, layers)) as peft_lm:
        return sum(p.numel() * p.element_size() for p in peft_lm.parameters() if p.requires_grad)


def cpu_breakdown(baseline_mb: float, after_load_mb: float, weights: int, lora: int, peak_mb: float) -> dict:
    """The CPU breakdown of a job's peak RSS (see the module docstring), in MiB."""
    lora_and_optimizer = LORA_TENSORS_WITH_ADAMW * lora / MB
    return {
        "peak_rss_mb": peak_mb,
        "baseline_mb": baseline_mb,
        "weights_mb": weights / MB,
        "loading_and_data_mb": after_load_mb - baseline_mb - weights / MB,
        "lora_and_optimizer_mb": lora_and_optimizer,
        "activations_and_logits_mb": peak_mb - after_load_mb - lora_and_optimizer,
    }


def cuda_memory_breakdown(
    base: LoadedLM,
    batch: Sequence[Row],
    job: Callable[[], Any],
    *,
    rank: int = 8,
    alpha: int = 16,
    layers: Sequence[int] | None = None,
    limit: int = 512,
) -> dict[str, Any] | None:
    """On CUDA: the peak allocated memory of `job()` (e.g. a whole forget job on `base`) against weights + LoRA +
    optimizer + the activations of one training batch, in MiB; None without CUDA (see `cpu_breakdown` there).

    The batch's activations are measured on their own: one optimiser step (Lethe's `train`, the NLL objective) on
    `batch` with a fresh adapter of `rank`/`alpha`/`layers` on the base LM, its peak allocated memory above what
    was allocated before (the weights and the adapter) less the gradients and AdamW moments. `within_bound` says
    whether the job's peak stays within the sum: no second copy of the weights, nothing but one batch at a time.
    """
    if base.device.type != "cuda":
        return None
    torch.cuda.synchronize(base.device)
    weights = tensor_bytes(base.lm)
    lora = lora_bytes(base, rank, alpha, layers)
    # Gradients and the two AdamW moments come on top of the adapter itself during a step.
    lora_and_optimizer = LORA_TENSORS_WITH_ADAMW * lora

    with attached_lora(base.lm, lora_config(base.lm, rank, alpha, layers)) as peft_lm:
        torch.cuda.reset_peak_memory_stats(base.device)
        before_step = torch.cuda.memory_allocated(base.device)
        schedule = Schedule(learning_rate=1e-4, epochs=1, batch_size=len(batch), max_steps=1)
        train(peft_lm, base.tokenizer, Objective(), batch, [], schedule, seed=0, limit=limit)
        torch.cuda.synchronize(base.device)
        step_peak = torch.cuda.max_memory_allocated(base.device)
    activations = step_peak - before_step - (lora_and_optimizer - lora)

    torch.cuda.reset_peak_memory_stats(base.device)
    job_before = torch.cuda.memory_allocated(base.device)
    job()
    torch.cuda.synchronize(base.device)
    job_peak = torch.cuda.max_memory_allocated(base.device)
    bound = weights + lora_and_optimizer + activations
    return {
        "weights_mb": weights / MB,
        "allocated_before_job_mb": job_before / MB,
        "lora_and_optimizer_mb": lora_and_optimizer / MB,
        "one_batch_activations_mb": activations / MB,
        "bound_mb": bound / MB,
        "job_peak_allocated_mb": job_peak / MB,
        "within_bound": job_peak <= bound,
    }
