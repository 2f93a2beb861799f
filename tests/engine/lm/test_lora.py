"""Attaching LoRA adapters (which layers get one, in place on a shared LM and off again) and the frozen reference
slot."""

import copy
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import (
    REFERENCE,
    FusedLoraLinear,
    attach_lora,
    attached,
    attached_lora,
    carries_lora,
    lora_config,
    lora_state,
    reference_adapter,
    reference_lm,
)


def assert_pristine(lm: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """`lm` is a plain LM again: no peft layer or config, the same weights bit for bit, frozen, in eval mode."""
    assert not carries_lora(lm) and not any("lora" in name for name, _ in lm.named_modules())
    assert "peft_config" not in vars(lm)
    state = lm.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[name], weights[name]) for name in weights)
    assert not lm.training and not any(p.requires_grad for p in lm.parameters())


def test_lora_is_attached_to_every_linear_layer_but_the_head(tiny_base: LoadedLM) -> None:
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    trainable = [name for name, p in peft_lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    wrapped = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_can_be_limited_to_some_layers(tiny_base: LoadedLM) -> None:
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8, layers=[1])
    trained = {name for name, p in peft_lm.named_parameters() if p.requires_grad}
    assert trained and all(".layers.1." in name for name in trained)


def _randomise_b(peft_lm: PeftModel, seed: int) -> None:
    """Give the trained adapter's B matrices (zero at init) random values, so that it changes the LM."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B.default" in name:
                parameter.normal_(0, 0.5)


def _logits(lm: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm(input_ids=input_ids).logits


def test_the_reference_slot_is_the_given_state_frozen_and_leaves_no_trace(tiny_base: LoadedLM) -> None:
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    _randomise_b(peft_lm, seed=1)
    fine_tuned = lora_state(peft_lm)
    input_ids = torch.tensor([tiny_base.tokenizer.encode("The red apple is a fruit")])
    fine_tuned_logits = _logits(peft_lm, input_ids)
    base_logits = _logits(tiny_base.lm, input_ids)
    names_before = [name for name, _ in peft_lm.named_parameters()]
    trainable_before = [name for name, p in peft_lm.named_parameters() if p.requires_grad]

    with reference_adapter(peft_lm, fine_tuned):
        _randomise_b(peft_lm, seed=2)  # training moves the trained adapter away from its state before
        trained_logits = _logits(peft_lm, input_ids)
        assert not torch.allclose(trained_logits, fine_tuned_logits, atol=1e-3)
        with reference_lm(peft_lm) as reference:
            assert torch.equal(_logits(reference, input_ids), fine_tuned_logits)
            assert not torch.is_grad_enabled()
        # Back to the trained adapter, whose parameters alone are trainable; the slot is not in its state.
        assert torch.equal(_logits(peft_lm, input_ids), trained_logits)
        assert [name for name, p in peft_lm.named_parameters() if p.requires_grad] == trainable_before
        assert set(lora_state(peft_lm)) == set(fine_tuned)
        assert any(f".{REFERENCE}." in name for name, _ in peft_lm.named_parameters())
    assert [name for name, _ in peft_lm.named_parameters()] == names_before
    assert list(peft_lm.peft_config) == ["default"]
    assert torch.equal(_logits(peft_lm, input_ids), trained_logits)

    # Without a reference state, the reference is the base LM.
    with reference_adapter(peft_lm, None), reference_lm(peft_lm) as reference:
        assert torch.equal(_logits(reference, input_ids), base_logits)
    with pytest.raises(ValueError, match="not a state"), reference_adapter(peft_lm, {}):
        pass
    assert list(peft_lm.peft_config) == ["default"]


def test_attached_lora_works_on_the_lm_itself_and_leaves_it_as_it_was(tiny_base: LoadedLM) -> None:
    lm = tiny_base.lm
    weights = {name: t.clone() for name, t in lm.state_dict().items()}
    input_ids = torch.tensor([tiny_base.tokenizer.encode("The red apple is a fruit")])
    base_logits = _logits(lm, input_ids)
    q_proj_weight = lm.model.layers[0].self_attn.q_proj.weight
    torch.manual_seed(0)
    with attached_lora(lm, lora_config(lm, rank=4, alpha=8)) as peft_lm:
        # No copy: the LoRA layers wrap the LM's own linear layers, whose weights are the very same tensors.
        assert carries_lora(lm) and peft_lm.get_base_model() is lm
        assert lm.model.layers[0].self_attn.q_proj.base_layer.weight is q_proj_weight
        _randomise_b(peft_lm, seed=1)
        peft_lm.train()
        trained = lora_state(peft_lm)
        assert not torch.allclose(_logits(peft_lm, input_ids), base_logits, atol=1e-3)
    assert_pristine(lm, weights)
    assert torch.equal(_logits(lm, input_ids), base_logits)

    # Put back on the LM with the same weights, the adapter is the same adapter; and off again on an exception.
    config = lora_config(lm, rank=4, alpha=8)
    with pytest.raises(RuntimeError, match="mid-job"), attached_lora(lm, config, trained) as peft_lm:
        again = lora_state(peft_lm)
        assert again.keys() == trained.keys() and all(torch.equal(again[n], trained[n]) for n in trained)
        raise RuntimeError("mid-job")
    assert_pristine(lm, weights)


def test_the_lm_takes_one_job_s_adapter_at_a_time(tiny_base: LoadedLM) -> None:
    lm = tiny_base.lm
    weights = {name: t.clone() for name, t in lm.state_dict().items()}
    config = lora_config(lm, rank=4, alpha=8)
    with attached_lora(lm, config):
        with pytest.raises(ValueError, match="in use by another job"), attached_lora(lm, config):
            pass
        assert carries_lora(lm)  # the refusal left the first job's adapter alone
    assert_pristine(lm, weights)


def test_an_injection_that_fails_half_way_is_undone(tiny_base: LoadedLM) -> None:
    lm = tiny_base.lm
    weights = {name: t.clone() for name, t in lm.state_dict().items()}

    def failing(target: torch.nn.Module) -> PeftModel:
        get_peft_model(target, lora_config(lm, rank=4, alpha=8))  # the layers are in; then loading fails
        raise RuntimeError("size mismatch")

    with pytest.raises(RuntimeError, match="size mismatch"), attached(lm, failing):
        pass
    assert_pristine(lm, weights)


def _unfused_twin(peft_lm: PeftModel, lm: torch.nn.Module) -> PeftModel:
    """A copy of `lm` with peft's own LoRA layers (no custom mapping) holding `peft_lm`'s adapter weights."""
    twin = get_peft_model(copy.deepcopy(lm), copy.deepcopy(lora_config(lm, rank=4, alpha=8)))
    twin.load_state_dict(peft_lm.state_dict())
    assert not any(isinstance(m, FusedLoraLinear) for m in twin.modules())
    return twin


@pytest.mark.parametrize("autocast", [False, True])
def test_the_fused_lora_layer_computes_peft_s_sum_and_gradients(tiny_base: LoadedLM, autocast: bool) -> None:
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    _randomise_b(peft_lm, seed=1)
    linear = [m for m in peft_lm.modules() if isinstance(m, LoraLinear)]
    assert linear and all(isinstance(m, FusedLoraLinear) for m in linear)
    twin = _unfused_twin(peft_lm, tiny_base.lm)
    input_ids = torch.tensor([tiny_base.tokenizer.encode("The red apple is a fruit, the old saw a tool")])
    grads = []
    for lm in (peft_lm, twin):
        lm.train()
        lm.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = lm(input_ids=input_ids).logits.float()
        logits.logsumexp(-1).sum().backward()
        grads.append((logits.detach(), {n: p.grad for n, p in lm.named_parameters() if p.requires_grad}))
    (fused_logits, fused_grads), (peft_logits, peft_grads) = grads
    assert fused_grads.keys() == peft_grads.keys() and fused_grads
    # fp32: the same products and sums, grouped as BLAS groups them; bf16: the sum is rounded once, not twice.
    atol = 5e-2 if autocast else 1e-5
    torch.testing.assert_close(fused_logits, peft_logits, atol=atol, rtol=atol)
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, peft_grads[name], atol=atol * 10, rtol=atol * 10, msg=name)
    # The fused forward is not a no-op: without the adapter's update the logits differ.
    with peft_lm.disable_adapter(), torch.no_grad():
        assert not torch.allclose(peft_lm(input_ids=input_ids).logits, fused_logits, atol=1e-3)


def test_the_fused_layer_leaves_no_mark_on_the_saved_adapter(tiny_base: LoadedLM, tmp_path: Path) -> None:
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    _randomise_b(peft_lm, seed=1)
    peft_lm.save_pretrained(tmp_path)
    assert "custom" not in (tmp_path / "adapter_config.json").read_text()
    # Loaded by plain peft, the adapter gives the fused layer's logits.
    loaded = PeftModel.from_pretrained(copy.deepcopy(tiny_base.lm), str(tmp_path))
    assert not any(isinstance(m, FusedLoraLinear) for m in loaded.modules())
    input_ids = torch.tensor([tiny_base.tokenizer.encode("The red apple is a fruit")])
    torch.testing.assert_close(_logits(loaded, input_ids), _logits(peft_lm, input_ids), atol=1e-5, rtol=1e-5)
