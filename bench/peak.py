"""This machine's matmul peak: the best of repeated square torch.matmul calls, on the CPU or a CUDA device."""

from __future__ import annotations

import time

import torch


def matmul_peak_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 30, device: str = "cpu") -> float:
    """Best FLOP/s of `repeats` (size × size) @ (size × size) products in `dtype` (2·size³ FLOPs each).

    On CUDA a call only queues the kernel: each product is timed between two synchronisations, so the time is
    the kernel's, not the launch's. A GPU needs a larger `size` than a CPU to reach its peak (8192 on an H100/H200).
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    cuda = torch.device(device).type == "cuda"

    def synchronise() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # the first call picks and prepares the kernel
    synchronise()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        synchronise()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best
