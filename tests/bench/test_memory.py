"""The memory breakdown's parts: bytes counted once per storage, LoRA counted on the base LM itself, the CPU split
adding up to the peak, and no CUDA figures without CUDA."""

import subprocess
import sys

import pytest
import torch

from bench.memory import (
    MB,
    RssSampler,
    cpu_breakdown,
    cuda_memory_breakdown,
    lora_bytes,
    peak_rss_mb,
    rss_mb,
    tensor_bytes,
)
from lethe.rows import ChoiceRow
from tests.engine.lm.test_lora import assert_pristine
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM


def test_weights_and_lora_bytes(tiny_base: LoadedLM) -> None:
    lm = tiny_base.lm
    parameters = {p.data_ptr(): p.numel() * p.element_size() for p in lm.parameters()}
    buffers = sum(b.numel() * b.element_size() for b in lm.buffers())
    assert tensor_bytes(lm) == sum(parameters.values()) + buffers
    config = lm.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    weights = {name: t.clone() for name, t in lm.state_dict().items()}
    # r × (in + out) per adapted linear layer: q, k, v, o (hidden × hidden here) and the MLP's three, in fp32.
    assert lora_bytes(tiny_base, rank=4, alpha=8) == 4 * 4 * layers * (4 * 2 * hidden + 3 * (hidden + inner))
    assert lora_bytes(tiny_base, rank=4, alpha=8, layers=[1]) == 4 * 4 * (4 * 2 * hidden + 3 * (hidden + inner))
    assert_pristine(lm, weights)  # counted on the base LM, which gets its adapter off again


def test_the_cpu_breakdown_adds_up_to_the_peak() -> None:
    parts = cpu_breakdown(baseline_mb=400.0, after_load_mb=1000.0, weights=512 * MB, lora=10 * MB, peak_mb=1300.0)
    assert parts["weights_mb"] == 512 and parts["loading_and_data_mb"] == 88
    assert parts["lora_and_optimizer_mb"] == 40 and parts["activations_and_logits_mb"] == 260
    summed = sum(value for key, value in parts.items() if key != "peak_rss_mb")
    assert summed == pytest.approx(parts["peak_rss_mb"])


def test_the_sampler_keeps_each_stage_s_peak() -> None:
    with RssSampler(interval_s=0.001) as sampler:
        block = torch.ones(64 * MB // 4)  # 64 MiB, written: resident
        sampler.stage = "big"
        while "big" not in sampler.peaks:
            pass
        del block
        sampler.stage = "small"
        while "small" not in sampler.peaks:
            pass
    assert sampler.peaks["big"] >= rss_mb() + 32


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU answer")
def test_no_cuda_figures_without_cuda(tiny_base: LoadedLM) -> None:
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(4, seed=0)]
    assert cuda_memory_breakdown(tiny_base, rows, lambda: None) is None


def test_a_process_started_by_a_larger_one_reads_its_own_peak() -> None:
    # The bench starts the memory and audit steps' processes after its own scoring and training have grown it:
    # ru_maxrss, which Linux carries across fork and exec, read the bench's peak there; VmHWM reads the child's own.
    grown = torch.ones(1024 * MB // 4)  # 1 GiB, written: resident in this process at the fork
    child_reads = (
        "import resource; from bench.memory import peak_rss_mb; "
        "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", child_reads], capture_output=True, text=True, check=True)
    own_peak, inherited = (float(value) for value in done.stdout.split())
    assert peak_rss_mb() >= rss_mb() >= 1024  # this process: its peak counts the tensor it holds
    assert inherited >= 1024  # what ru_maxrss would have said: this process's peak, the tensor included
    # The child's own: Python with torch and the project imported (about 460 MB), never the parent's tensor.
    assert 0 < own_peak < inherited - 512
    del grown
