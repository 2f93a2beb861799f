"""Where a worker puts an LM (worker/engine/lm/placement.py): the GPU count setting, the labels a job records, and
the device map of an LM spread over GPUs, planned on an empty (meta) LM of a real shape.

The planning needs no GPU (it reads sizes only); running on several devices does: tests/engine/lm/test_spread.py.
"""

from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM, LlamaConfig

from worker.engine.lm import load, placement
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.placement import (
    WEIGHTS_SHARE,
    Placement,
    PlacementError,
    input_device,
    spread_device_map,
    worker_gpus,
    worker_placement,
)

GB = 10**9


def llama_3_2_1b(tied: bool = True) -> LlamaConfig:
    """Llama-3.2-1B's shape (its config.json): 16 layers of 2048, a 128,256-token vocabulary, head tied."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=tied,
    )


def empty_lm(config: LlamaConfig, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    with init_empty_weights():
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    lm.tie_weights()
    return lm


def weight_bytes(lm: torch.nn.Module, prefix: str) -> int:
    return sum(p.numel() * p.element_size() for name, p in lm.named_parameters() if name.startswith(prefix + "."))


@pytest.mark.parametrize(("value", "gpus"), [(None, 1), ("", 1), ("1", 1), (" 4 ", 4)])
def test_the_gpu_count_defaults_to_one(monkeypatch: pytest.MonkeyPatch, value: str | None, gpus: int) -> None:
    if value is None:
        monkeypatch.delenv("LETHE_WORKER_GPUS", raising=False)
    else:
        monkeypatch.setenv("LETHE_WORKER_GPUS", value)
    assert worker_gpus() == gpus


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_gpu_count_is_an_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LETHE_WORKER_GPUS", value)
    with pytest.raises(PlacementError, match=f"LETHE_WORKER_GPUS='{value}' must be a whole number of GPUs"):
        worker_gpus()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU placement")
def test_without_cuda_a_worker_computes_on_the_cpu_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_WORKER_GPUS", "2")  # about GPUs: no GPU, nothing to spread
    monkeypatch.setenv("LETHE_PRECISION", "fp32")
    assert worker_placement() == Placement((torch.device("cpu"),), torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU placement")
def test_under_autocast_a_cpu_worker_stores_the_blocks_linear_weights_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETHE_PRECISION", "bf16")
    placement = worker_placement()
    assert placement == Placement((torch.device("cpu"),), torch.float32, torch.bfloat16)
    assert placement.precision_label() == "bf16-autocast, bf16 linear weights"


def test_more_gpus_than_visible_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host with one visible GPU (stood in for: the check is arithmetic on what torch reports)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LETHE_WORKER_GPUS", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(PlacementError, match=r"LETHE_WORKER_GPUS=2 but this worker sees 1 GPU\(s\) .*=3\)"):
        worker_placement()


@pytest.mark.parametrize(
    ("setting", "dtype", "label"),
    [
        ("fp32", torch.float32, "fp32"),
        ("bf16", torch.float32, "bf16-autocast"),
        ("bf16", torch.bfloat16, "bf16-autocast, bf16 weights"),
        ("fp32", torch.bfloat16, "bf16"),
    ],
)
def test_the_precision_label_says_how_matmuls_run_and_weights_are_stored(
    monkeypatch: pytest.MonkeyPatch, setting: str, dtype: torch.dtype, label: str
) -> None:
    monkeypatch.setenv("LETHE_PRECISION", setting)
    assert Placement((torch.device("cpu"),), dtype).precision_label() == label


def test_the_device_label_names_the_cpu() -> None:
    label = Placement((torch.device("cpu"),), torch.float32).device_label()
    assert label.startswith("cpu (") and label.endswith(")") and len(label) > len("cpu ()")
    assert label == f"cpu ({placement._cpu_name()})"


def test_the_device_label_names_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {0: "NVIDIA H200", 1: "NVIDIA H200", 2: "NVIDIA H200", 3: "NVIDIA A100-SXM4-80GB"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: names[torch.device(device).index])

    def label(*indices: int) -> str:
        return Placement(tuple(torch.device("cuda", i) for i in indices), torch.bfloat16).device_label()

    assert label(0) == "cuda:0 (NVIDIA H200)"
    assert label(0, 1, 2) == "cuda:0-2 (3× NVIDIA H200)"
    assert label(0, 2) == "cuda:0,2 (2× NVIDIA H200)"
    assert label(2, 3) == "cuda:2-3 (NVIDIA H200, NVIDIA A100-SXM4-80GB)"


@pytest.mark.parametrize("tied", [True, False])
def test_a_1b_lm_is_spread_whole_layers_in_order_within_each_gpus_share(tied: bool) -> None:
    """Llama-3.2-1B in bf16 (2.5 GB tied, 3.0 GB untied) on two GPUs of 3 GB: it takes both."""
    lm = empty_lm(llama_3_2_1b(tied))
    memory = [3 * GB] * 2
    device_map = spread_device_map(lm, memory)

    assert set(device_map.values()) == {0, 1}
    layers = [device_map[f"model.layers.{i}"] for i in range(16)]  # every layer whole: a key of its own
    assert layers == sorted(layers)  # in order: the hidden states go from GPU 0 to GPU 1 once
    assert device_map["model.embed_tokens"] == 0  # the input device
    if tied:
        assert device_map["lm_head"] == device_map["model.embed_tokens"]
    for gpu in (0, 1):
        held = sum(weight_bytes(lm, name) for name, device in device_map.items() if device == gpu)
        assert held <= WEIGHTS_SHARE * memory[gpu]


def test_a_large_gpu_takes_a_1b_lm_on_fewer_gpus_than_offered() -> None:
    """Four 80 GB GPUs: the 2.5 GB fit on one with room to spare; balancing still spreads them over a few."""
    device_map = spread_device_map(empty_lm(llama_3_2_1b()), [80 * GB] * 4)
    assert set(device_map.values()) <= {0, 1, 2, 3}
    assert all(isinstance(device, int) for device in device_map.values())


def test_an_lm_too_large_for_the_gpus_is_refused_naming_the_setting() -> None:
    with pytest.raises(PlacementError) as refused:
        spread_device_map(empty_lm(llama_3_2_1b()), [1 * GB, 1 * GB])
    message = str(refused.value)
    assert "the LM's weights (2.5 GB) do not fit in 70% of the memory of 2 GPU(s) (1.4 GB;" in message
    assert "LETHE_WORKER_GPUS" in message


def test_the_input_device_is_the_embeddings_device(tiny_base: LoadedLM) -> None:
    assert input_device(tiny_base.lm) == tiny_base.device == tiny_base.lm.get_input_embeddings().weight.device


def test_the_loader_plans_a_saved_lm_on_an_empty_copy(tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What load_base_lm does before loading a spread LM: the plan from the directory's config alone, in the dtype
    it loads in (two GPUs' memory stood in for: planning reads sizes only)."""
    monkeypatch.setattr(load, "gpu_memory", lambda _placement: [80 * GB, 80 * GB])
    two_gpus = Placement((torch.device("cuda", 0), torch.device("cuda", 1)), torch.bfloat16)
    device_map = load._spread_device_map(tiny_lm_dir, two_gpus)
    assert set(device_map.values()) == {0, 1}
    assert device_map["model.embed_tokens"] == 0 and device_map["lm_head"] == 1
