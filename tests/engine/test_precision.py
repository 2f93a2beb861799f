import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lethe.rows import ChoiceRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine import precision
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import attach_lora
from worker.engine.metrics.choice_scores import score_choices
from worker.engine.precision import autocast, bf16_supported, full_precision, mixed_precision_enabled
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (first processor of /proc/cpuinfo)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("/proc/cpuinfo lists no flags")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags from Linux's /proc/cpuinfo")
def test_bf16_support_on_this_cpu_follows_its_flags() -> None:
    """Native bf16 on x86: AVX512-BF16 (VDPBF16PS) or AMX-BF16 (tile matmuls), read from the kernel, not torch."""
    native = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    assert bf16_supported("cpu") is native
    assert bf16_supported(torch.device("cpu")) is native
    assert bf16_supported(torch.device("meta")) is False


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True), (True, True), (False, False)])
def test_either_bf16_instruction_set_is_enough(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool) -> None:
    """A CPU with AVX512-BF16 only (Cooper Lake, Zen 4) or AMX only counts as native; one with neither does not."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert bf16_supported("cpu") is (avx512_bf16 or amx)


@pytest.mark.parametrize("supported", [True, False])
@pytest.mark.parametrize("setting", ["auto", "", None])
def test_autocast_defaults_to_bf16_where_supported(
    monkeypatch: pytest.MonkeyPatch, supported: bool, setting: str | None
) -> None:
    """LETHE_PRECISION auto, empty or unset: bf16 where the hardware has it."""
    if setting is None:
        monkeypatch.delenv("LETHE_PRECISION", raising=False)
    else:
        monkeypatch.setenv("LETHE_PRECISION", setting)
    monkeypatch.setattr(precision, "bf16_supported", lambda _device: supported)
    assert mixed_precision_enabled("cpu") is supported
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu"):
        output = layer(torch.randn(2, 4))
    assert output.dtype == (torch.bfloat16 if supported else torch.float32)


@pytest.mark.parametrize("supported", [True, False])
@pytest.mark.parametrize(
    ("setting", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("BF16", torch.bfloat16)]
)
def test_lethe_precision_forces_fp32_or_bf16_whatever_the_hardware(
    monkeypatch: pytest.MonkeyPatch, supported: bool, setting: str, dtype: torch.dtype
) -> None:
    monkeypatch.setenv("LETHE_PRECISION", setting)
    monkeypatch.setattr(precision, "bf16_supported", lambda _device: supported)
    assert mixed_precision_enabled("cpu") is (dtype == torch.bfloat16)
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu"):
        assert layer(torch.randn(2, 4)).dtype == dtype


@pytest.mark.parametrize("setting", ["fp16", "bfloat16", "true"])
def test_an_unknown_precision_is_an_error_naming_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("LETHE_PRECISION", setting)
    message = f"LETHE_PRECISION='{setting}' is not one of auto, fp32, bf16"
    with pytest.raises(ValueError, match=message):
        mixed_precision_enabled("cpu")
    with pytest.raises(ValueError, match=message), autocast("cpu"):
        pass


def test_an_explicit_choice_overrides_lethe_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the bench does when it sweeps precisions (it must not care what the variable says)."""
    monkeypatch.setenv("LETHE_PRECISION", "fp32")
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", enabled=True):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    monkeypatch.setenv("LETHE_PRECISION", "bf16")
    with autocast("cpu", enabled=False):
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_autocast_can_be_forced_on_or_off() -> None:
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", enabled=True):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast("cpu", enabled=False):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # weights are never converted


def test_full_precision_runs_one_module_outside_autocast() -> None:
    head, other = torch.nn.Linear(4, 8), torch.nn.Linear(4, 4)
    inputs = torch.randn(3, 5, 4)[:, 2:]  # a slice, as logits_to_keep passes
    expected = head(inputs)
    with autocast("cpu", enabled=True), full_precision(head):
        assert head(inputs.to(torch.bfloat16)).dtype == torch.float32
        torch.testing.assert_close(head(inputs), expected)
        assert other(inputs).dtype == torch.bfloat16
    with autocast("cpu", enabled=True):
        assert head(inputs).dtype == torch.bfloat16  # the hooks are gone


def test_full_precision_restores_autocast_when_the_module_raises() -> None:
    class Failing(torch.nn.Linear):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    failing = Failing(4, 4)
    with autocast("cpu", enabled=True):
        with full_precision(failing), pytest.raises(RuntimeError):
            failing(torch.randn(2, 4))
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(("setting", "expected"), [("fp32", False), ("bf16", True)])
def test_training_and_scoring_follow_lethe_precision(
    monkeypatch: pytest.MonkeyPatch, tiny_base: LoadedLM, setting: str, expected: bool
) -> None:
    """train(mixed_precision=None) and score_choices(bf16=None) both autocast as the variable says."""
    monkeypatch.setenv("LETHE_PRECISION", setting)
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    autocasting: list[bool] = []
    hook = peft_lm.get_input_embeddings().register_forward_hook(
        lambda *_: autocasting.append(torch.is_autocast_enabled("cpu"))
    )
    rows = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(4, seed=0)]
    schedule = Schedule(learning_rate=1e-3, epochs=1, batch_size=4, max_steps=1)
    train(peft_lm, tiny_base.tokenizer, Objective(), rows, [], schedule, seed=0, limit=64)
    score_choices(peft_lm, tiny_base.tokenizer, rows, batch_size=8)
    hook.remove()
    assert len(autocasting) == 2 and set(autocasting) == {expected}


def _head_logits_and_inputs(lm: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's logits under bf16 autocast with its head in `full_precision`, and what its head was given."""
    head = lm.get_output_embeddings()
    given: list[torch.Tensor] = []
    # Registered first, so it sees the head's input before full_precision's cast.
    handle = head.register_forward_pre_hook(lambda _module, args: given.append(args[0].detach().clone()))
    try:
        with torch.inference_mode(), autocast(input_ids.device, enabled=True), full_precision(head):
            logits = lm(input_ids=input_ids).logits
    finally:
        handle.remove()
    return logits, given[0]


def _assert_head_in_fp32(lm: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """The head's logits equal an fp32 product of its inputs and weights; its weights are as they were after."""
    head = lm.get_output_embeddings()
    stored, tied = head.weight, head.weight is lm.get_input_embeddings().weight
    logits, given = _head_logits_and_inputs(lm, input_ids)
    with torch.no_grad():
        expected = torch.nn.functional.linear(given.float(), stored.float())
        bf16_product = torch.nn.functional.linear(given.to(stored.dtype), stored).float()
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=1.3e-6, atol=1e-6)
    # What the head computed before (inputs cast to the bf16 weights' dtype, a bf16 product) fails that check.
    assert not torch.allclose(bf16_product, expected, rtol=1.3e-6, atol=1e-6)
    assert head.weight is stored and head.weight.dtype == torch.bfloat16
    assert (head.weight is lm.get_input_embeddings().weight) is tied


@pytest.mark.parametrize("tied", [True, False])
def test_a_bf16_head_computes_in_fp32(tied: bool) -> None:
    """Weights stored in bf16 (as on a GPU), head tied to the embeddings (SmolLM2, Llama-3.2) or not."""
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    lm = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    assert (lm.get_output_embeddings().weight is lm.get_input_embeddings().weight) is tied
    _assert_head_in_fp32(lm, torch.randint(0, 320, (2, 12)))


@pytest.mark.gpu
def test_on_cuda_the_loaded_lm_has_bf16_weights_and_an_fp32_head(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's loader on CUDA: bf16 weights (where the GPU has bf16), the head's logits still fp32 products."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16: the LM loads in fp32")
    # The suite runs in fp32 (tests/conftest.py); a worker runs with the default, as here.
    monkeypatch.setenv("LETHE_PRECISION", "auto")
    base = load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path)
    assert base.device.type == "cuda" and base.lm.get_output_embeddings().weight.dtype == torch.bfloat16
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # `precision.exclude_cudnn_attention`
    _assert_head_in_fp32(base.lm, torch.randint(0, 300, (2, 12), device=base.device))


def test_a_worker_on_cuda_leaves_cudnn_attention_out(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the loader puts an LM on CUDA it turns torch's cuDNN attention off; on the CPU it leaves it alone.
    (The placement is faked so the CPU can check the branch: the move to the device is a no-op here.)"""
    from worker.engine.lm import load
    from worker.engine.lm.placement import Placement

    assert torch.backends.cuda.cudnn_sdp_enabled()
    try:
        load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path)
        assert torch.backends.cuda.cudnn_sdp_enabled()
        monkeypatch.setattr(load, "worker_placement", lambda: Placement((torch.device("cuda", 0),), torch.float32))
        monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: self)
        load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
