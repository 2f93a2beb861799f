"""Activation checkpointing under LETHE_ACTIVATION_BUDGET_MB: the budget's parsing, the decision, and that a
checkpointed run recomputes the layers and trains to the same weights."""

import pytest
import torch

from tests.engine.training.test_loop import fresh_peft_lm, run
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import lora_state
from worker.engine.methods.gradient_ascent import GradientAscent
from worker.engine.training.checkpointing import (
    ACTIVATION_BUDGET_VARIABLE,
    activation_budget_bytes,
    activation_bytes,
    needs_checkpointing,
)
from worker.engine.training.loop import Schedule


def test_the_budget_is_read_in_megabytes_and_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACTIVATION_BUDGET_VARIABLE, raising=False)
    assert activation_budget_bytes() is None
    for value, expected in (("0", None), ("256", 256 * 2**20), (" 1.5 ", int(1.5 * 2**20))):
        monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, value)
        assert activation_budget_bytes() == expected
    for bad in ("lots", "-1"):
        monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, bad)
        with pytest.raises(ValueError, match=ACTIVATION_BUDGET_VARIABLE):
            activation_budget_bytes()


def test_a_step_is_checkpointed_only_past_the_budget(tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_base.lm.config
    per_token = config.num_hidden_layers * (16 * config.hidden_size + 4 * config.intermediate_size) * 4
    assert activation_bytes(tiny_base.lm, 100) == 100 * per_token
    monkeypatch.delenv(ACTIVATION_BUDGET_VARIABLE, raising=False)
    assert not needs_checkpointing(tiny_base.lm, 10**9)
    monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, str(100 * per_token / 2**20))
    assert not needs_checkpointing(tiny_base.lm, 100)
    assert needs_checkpointing(tiny_base.lm, 101)


def _train_counting_layer_calls(tiny_base: LoadedLM) -> tuple[dict[str, torch.Tensor], int]:
    """Two gradient-ascent steps; the LoRA state after and how often decoder layer 0's MLP ran (transformers
    checkpoints a layer's `forward`, leaving the layer's own hooks outside: its modules' hooks see the recompute)."""
    peft_lm = fresh_peft_lm(tiny_base)
    calls = [0]
    layer = peft_lm.get_base_model().model.layers[0].mlp
    handle = layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        run(tiny_base, peft_lm, GradientAscent(), Schedule(learning_rate=1e-2, epochs=1, batch_size=16, max_steps=2))
    finally:
        handle.remove()
    return lora_state(peft_lm), calls[0]


def test_a_checkpointed_run_recomputes_the_layers_and_trains_to_the_same_weights(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ACTIVATION_BUDGET_VARIABLE, raising=False)
    plain, plain_calls = _train_counting_layer_calls(tiny_base)
    monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, "0.001")  # 1 KB: every step passes it
    checkpointed, checkpointed_calls = _train_counting_layer_calls(tiny_base)
    # One forward per step, and with checkpointing one more, in the backward pass.
    assert (plain_calls, checkpointed_calls) == (2, 4)
    for name, value in plain.items():
        torch.testing.assert_close(checkpointed[name], value, rtol=1e-5, atol=1e-6)
    assert any(
        not torch.equal(value, fresh)
        for value, fresh in zip(plain.values(), lora_state(fresh_peft_lm(tiny_base)).values(), strict=True)
    )
