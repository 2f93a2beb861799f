"""Attaching LoRA adapters: which layers get one."""

import copy

import torch

from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora


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
