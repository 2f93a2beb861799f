"""bf16 autocast where the hardware computes bf16 natively, fp32 everywhere else (LETHE_PRECISION overrides).

On a CPU under autocast matmuls run in bf16 (with fp32 accumulation) while norms, softmax and the residual stream
stay fp32; the decoder blocks' linear weights are then stored in bf16, which autocast would cast them to anyway
(`lm/block_weights.py`), the rest in fp32. A CPU without native bf16 (AVX512-BF16 or AMX) emulates it, slower than
fp32, so autocast is off there by default. On a GPU the weights are stored in bf16 where autocast is on (half the
memory; `lm/placement.py`), in fp32 where it is off. Either way the LM head scores in fp32 (`full_precision`).

LETHE_PRECISION is read here and nowhere else: `auto` (the default) is the rule above, `fp32` never autocasts,
`bf16` always does (on a CPU without native bf16 too: same results, only slower). It is read on every call, so
training and scoring in one process always agree, and a test can set it for a block. How weights are stored is
decided when an LM is loaded: the worker's cache (`lm/load.py`) loads the LM again when the setting changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def bf16_supported(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 matmuls natively (so faster than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


PRECISION_VARIABLE = "LETHE_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16")


def configured_precision() -> str:
    """LETHE_PRECISION (default `auto`), checked against PRECISIONS."""
    value = os.environ.get(PRECISION_VARIABLE, "auto").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(
            f"{PRECISION_VARIABLE}={os.environ[PRECISION_VARIABLE]!r} is not one of {', '.join(PRECISIONS)}"
        )
    return value


def mixed_precision_enabled(device: torch.device | str) -> bool:
    """Whether to run under bf16 autocast on `device`: as LETHE_PRECISION says, `auto` where bf16 is native."""
    precision = configured_precision()
    if precision == "auto":
        return bf16_supported(device)
    return precision == "bf16"


@contextmanager
def autocast(device: torch.device | str, enabled: bool | None = None) -> Iterator[None]:
    """bf16 autocast on `device` if `enabled` (None: if `mixed_precision_enabled(device)`), otherwise no change."""
    device = torch.device(device)
    if enabled is None:
        enabled = mixed_precision_enabled(device)
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


@contextmanager
def full_precision(module: torch.nn.Module) -> Iterator[None]:
    """Within this block, `module` (the LM head) computes in fp32 with autocast off, whatever its weights' dtype.

    Its logits become log-probabilities summed over tokens, and bf16 logits (8 bits of mantissa: ±0.06 at a logit
    of 20) would blur close choices. Casting the inputs to the weights' dtype is not enough where the weights are
    stored in bf16 (on a GPU): the product would be rounded to bf16 before any upcast. So the module's own floating
    parameters are swapped, for the block, for fp32 copies made once on entry, and its inputs are cast to fp32.
    Where they are fp32 already (the CPU) nothing is copied. A copy lives only as long as the block: for
    Llama-3.2-1B's head (128,256 × 2,048) 1.05 GB on its GPU during a scoring pass, instead of an fp32 head kept
    for the worker's life, which would also untie the head from the embeddings where the LM ties them (SmolLM2,
    Llama-3.2) and stay in memory through training, where the head is frozen and runs under autocast anyway.
    Meant for scoring: gradients reach the module's inputs, not its weights (the copies are detached).
    """
    own = module.named_parameters(recurse=False)
    originals = {name: p for name, p in own if p.is_floating_point() and p.dtype != torch.float32}
    device_type = next(module.parameters()).device.type
    contexts: list[torch.autocast] = []

    def before(_module: torch.nn.Module, args: tuple) -> tuple:
        contexts.append(torch.autocast(device_type=device_type, enabled=False))
        contexts[-1].__enter__()
        # contiguous: a slice (logits_to_keep) would send the product to bmm with a broadcast weight, several
        # times slower than one mm.
        return tuple(
            a.float().contiguous() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )

    def after(_module: torch.nn.Module, _args: tuple, _output: object) -> None:
        contexts.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():  # inside the `try`: a copy that runs out of memory leaves every original in place
            for name, parameter in originals.items():
                setattr(module, name, torch.nn.Parameter(parameter.float(), requires_grad=False))
        yield
    finally:
        for handle in handles:
            handle.remove()
        while contexts:  # a forward that raised never reached `after`
            contexts.pop().__exit__(None, None, None)
        for name, parameter in originals.items():
            setattr(module, name, parameter)


def exclude_cudnn_attention() -> None:
    """Keep torch's scaled-dot-product attention off its cuDNN kernel, for this process (a worker's LMs on CUDA).

    Seen on an H200 (torch 2.11, CUDA 13.0; bench/results-gpu-nan.json): Lethe's gradient ascent on a random-init
    Llama-3.2-1B in bf16, fed left-padded batches of 16 rows of about 550 tokens, gave NaN losses from its ninth step
    on with the default kernels, which chose cuDNN's; with cuDNN left out (flash, memory-efficient or math kernels)
    the same 32 steps stayed finite and followed the packed run's curve (-12.1 to -17.3). Left padding gives every
    padding position's query a fully masked row. The cause inside cuDNN is not established; the other kernels are.
    """
    torch.backends.cuda.enable_cudnn_sdp(False)
