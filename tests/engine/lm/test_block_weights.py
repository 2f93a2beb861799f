"""The decoder blocks' linear weights stored in bf16 where a CPU computes under bf16 autocast: the same numbers as
the fp32-stored LM under autocast, bit for bit, and passes outside autocast still run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tiny_lm import FAMILIES, build_tiny_family_lm, task_corpus
from worker.engine.lm.block_weights import block_matmul_layers, store_block_matmuls
from worker.engine.lm.load import BaseLMCache, LoadedLM, load_base_lm
from worker.engine.lm.lora import REFERENCE, attached_lora, lora_config, lora_state, reference_adapter
from worker.engine.lm.placement import worker_placement
from worker.engine.training.packing import _measure

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU placement (a GPU stores every weight in bf16)"
)


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_family_lm(tmp_path_factory.mktemp(request.param), task_corpus(), request.param)


def _load(directory: Path, precision: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LoadedLM:
    monkeypatch.setenv("LETHE_PRECISION", precision)
    return load_base_lm("tiny", f"path:{directory}", tmp_path)


def _batch(loaded: LoadedLM) -> dict[str, torch.Tensor]:
    encoded = loaded.tokenizer(["the cat sat on the mat", "a dog"], return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_only_the_blocks_linear_weights_are_stored_in_bf16(
    family_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded = _load(family_dir, "bf16", monkeypatch, tmp_path)
    converted = {id(p) for layer in block_matmul_layers(loaded.lm) for p in layer.parameters()}
    assert converted
    for name, parameter in loaded.lm.named_parameters():
        expected = torch.bfloat16 if id(parameter) in converted else torch.float32
        assert parameter.dtype == expected, name
        assert not parameter.requires_grad, name
    assert loaded.lm.get_input_embeddings().weight.dtype == torch.float32
    assert loaded.lm.get_output_embeddings().weight.dtype == torch.float32
    assert worker_placement().precision_label() == "bf16-autocast, bf16 linear weights"


def test_under_autocast_the_logits_and_lora_gradients_are_those_of_fp32_weights_bit_for_bit(
    family_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stored_fp32 = _load(family_dir, "fp32", monkeypatch, tmp_path / "fp32")
    stored_bf16 = _load(family_dir, "bf16", monkeypatch, tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in stored_fp32.lm.parameters())
    batch = _batch(stored_fp32)
    results = []
    for loaded in (stored_fp32, stored_bf16):
        config = lora_config(loaded.lm, rank=4, alpha=8)
        torch.manual_seed(0)
        with attached_lora(loaded.lm, config) as peft_lm:
            lora = {name: p for name, p in peft_lm.named_parameters() if p.requires_grad}
            assert lora and all(p.dtype == torch.float32 for p in lora.values())  # LoRA trains in fp32 either way
            with torch.no_grad():
                for name, parameter in lora.items():
                    if "lora_B" in name:  # B = 0 would leave A's gradients zero
                        parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
            peft_lm.train()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = peft_lm(**batch).logits
            logits.float().logsumexp(-1).mean().backward()
            results.append((logits.detach(), {name: p.grad.clone() for name, p in lora.items()}))
    (logits_fp32, grads_fp32), (logits_bf16, grads_bf16) = results
    assert torch.equal(logits_fp32, logits_bf16)
    assert grads_fp32.keys() == grads_bf16.keys()
    for name in grads_fp32:
        assert torch.equal(grads_fp32[name], grads_bf16[name]), name


def test_adapter_weights_put_on_converted_blocks_stay_exact_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """peft moves a new adapter to its base layer's dtype before casting it back to fp32: weights loaded into an
    adapter (a parent's, a snapshot's, the reference slot's) come in after that and keep every fp32 bit."""
    directory = build_tiny_family_lm(tmp_path / "llama", task_corpus(), "llama")
    loaded = _load(directory, "bf16", monkeypatch, tmp_path / "bf16")
    config = lora_config(loaded.lm, rank=4, alpha=8)
    with attached_lora(loaded.lm, config) as peft_lm:
        generator = torch.Generator().manual_seed(0)
        state = {name: torch.randn(t.shape, generator=generator) for name, t in lora_state(peft_lm).items()}
    with attached_lora(loaded.lm, config, state) as peft_lm:
        held = lora_state(peft_lm)
        assert all(held[name].dtype == torch.float32 and torch.equal(held[name], state[name]) for name in state)
        with reference_adapter(peft_lm, state):
            slot = {
                n.replace(f".{REFERENCE}.", ".default."): p
                for n, p in peft_lm.named_parameters()
                if f".{REFERENCE}." in n
            }
            assert slot.keys() == state.keys()
            assert all(p.dtype == torch.float32 and torch.equal(p, state[name]) for name, p in slot.items())


def test_outside_autocast_a_converted_layer_computes_as_autocast_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = build_tiny_family_lm(tmp_path / "llama", task_corpus(), "llama")
    stored_fp32 = _load(directory, "fp32", monkeypatch, tmp_path / "fp32")
    stored_bf16 = _load(directory, "bf16", monkeypatch, tmp_path / "bf16")
    layer_fp32, layer_bf16 = (block_matmul_layers(loaded.lm)[0] for loaded in (stored_fp32, stored_bf16))
    x = torch.randn(3, layer_fp32.in_features, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer_fp32(x)
    out = layer_bf16(x)  # no autocast: the input is cast in, the output cast back to the input's dtype
    assert out.dtype == torch.float32
    assert torch.equal(out, expected.float())
    # The whole LM runs without autocast too (generation does), near the fp32 LM.
    batch = _batch(stored_fp32)
    with torch.no_grad():
        reference = stored_fp32.lm(**batch).logits
        logits = stored_bf16.lm(**batch).logits
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, reference, atol=0.05 * float(reference.abs().max()))


def test_the_packing_check_still_passes_on_converted_weights(
    family_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded = _load(family_dir, "bf16", monkeypatch, tmp_path)
    assert _measure(loaded.lm)


def test_the_cache_reloads_a_base_lm_when_the_precision_changes(
    family_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = BaseLMCache(tmp_path)
    monkeypatch.setenv("LETHE_PRECISION", "bf16")
    first = cache.get("tiny", f"path:{family_dir}")
    assert cache.get("tiny", f"path:{family_dir}") is first
    monkeypatch.setenv("LETHE_PRECISION", "fp32")
    second = cache.get("tiny", f"path:{family_dir}")
    assert second is not first
    assert all(p.dtype == torch.float32 for p in second.lm.parameters())


def test_a_trainable_block_layer_is_refused_with_nothing_converted(tmp_path: Path) -> None:
    directory = build_tiny_family_lm(tmp_path / "llama", task_corpus(), "llama")
    lm = AutoModelForCausalLM.from_pretrained(directory)
    lm.requires_grad_(False)
    block_matmul_layers(lm)[-1].requires_grad_(True)
    with pytest.raises(ValueError, match="is trainable: only frozen weights convert"):
        store_block_matmuls(lm, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in lm.parameters())
