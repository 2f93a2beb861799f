"""Attaching LoRA adapters (which layers get one) and the frozen reference slot."""

import copy

import pytest
import torch
from peft import PeftModel

from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import REFERENCE, attach_lora, lora_state, reference_adapter, reference_lm


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
