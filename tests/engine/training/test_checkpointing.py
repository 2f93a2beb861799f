"""Activation checkpointing under LETHE_ACTIVATION_BUDGET_MB: the budget's parsing, the decision, and that a
checkpointed run recomputes the layers and trains to the same weights."""

from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from tests.engine.training.test_loop import fresh_peft_lm, run
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import lora_state
from worker.engine.methods.gradient_ascent import GradientAscent
from worker.engine.training import loop
from worker.engine.training.checkpointing import (
    ACTIVATION_BUDGET_VARIABLE,
    CPU_BUDGET_MB,
    activation_budget_bytes,
    activation_bytes,
    layers_to_checkpoint,
)
from worker.engine.training.loop import Schedule


def test_the_budget_is_read_in_megabytes_and_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACTIVATION_BUDGET_VARIABLE, raising=False)
    # Unset: a CPU worker's default, none on a GPU.
    assert activation_budget_bytes("cpu") == CPU_BUDGET_MB * 2**20 == 256 * 2**20
    assert activation_budget_bytes("cuda") is None
    for value, expected in (("0", None), ("256", 256 * 2**20), (" 1.5 ", int(1.5 * 2**20))):
        monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, value)
        assert activation_budget_bytes() == expected
    for bad in ("lots", "-1"):
        monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, bad)
        with pytest.raises(ValueError, match=ACTIVATION_BUDGET_VARIABLE):
            activation_budget_bytes()


def test_just_enough_layers_are_checkpointed_to_fit_the_budget(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_base.lm.config
    layers = config.num_hidden_layers
    per_token = layers * (16 * config.hidden_size + 4 * config.intermediate_size) * 4
    assert activation_bytes(tiny_base.lm, 100) == 100 * per_token
    monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, "0")
    assert layers_to_checkpoint(tiny_base.lm, 10**9) == []
    monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, str(100 * per_token / 2**20))
    assert layers_to_checkpoint(tiny_base.lm, 100) == []
    # One token over: one layer (its activations less the input it keeps) more than covers one token's worth.
    assert layers_to_checkpoint(tiny_base.lm, 101) == [0]
    assert layers_to_checkpoint(tiny_base.lm, 10**6) == list(range(layers))


def test_the_layers_are_the_fewest_that_fit_and_spread_over_the_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536)
    lm = cast(PreTrainedModel, SimpleNamespace(config=config, device=torch.device("cpu")))
    tokens = 300
    full = activation_bytes(lm, tokens)
    per_layer, kept_input = full / 30, tokens * 576 * 4
    for budget_mb in (400, 256, 128, 32):
        monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, str(budget_mb))
        chosen = layers_to_checkpoint(lm, tokens)
        k = len(chosen)
        assert len(set(chosen)) == k and all(0 <= i < 30 for i in chosen)
        kept = (30 - k) * per_layer + k * kept_input
        assert kept <= budget_mb * 2**20 < kept + per_layer - kept_input  # fits, and one layer fewer would not
        gaps = np.diff([*chosen, chosen[0] + 30])
        assert gaps.max() - gaps.min() <= 1  # evenly spread (cyclically)


def _train_counting_layer_calls(tiny_base: LoadedLM) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Two gradient-ascent steps; the LoRA state after and how often each decoder layer's MLP ran (transformers
    checkpoints a layer's `forward`, leaving the layer's own hooks outside: its modules' hooks see the recompute)."""
    peft_lm = fresh_peft_lm(tiny_base)
    layers = peft_lm.get_base_model().model.layers
    calls = [0] * len(layers)
    handles = [
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer in enumerate(layers)
    ]
    try:
        run(tiny_base, peft_lm, GradientAscent(), Schedule(learning_rate=1e-2, epochs=1, batch_size=16, max_steps=2))
    finally:
        for handle in handles:
            handle.remove()
    return lora_state(peft_lm), calls


def test_a_checkpointed_run_recomputes_every_layer_and_trains_to_the_same_weights(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = tiny_base.lm.config.num_hidden_layers
    monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, "0")
    plain, plain_calls = _train_counting_layer_calls(tiny_base)
    monkeypatch.setenv(ACTIVATION_BUDGET_VARIABLE, "0.001")  # 1 KB: every step passes it, with every layer
    checkpointed, checkpointed_calls = _train_counting_layer_calls(tiny_base)
    # One forward per step, and with checkpointing one more, in the backward pass.
    assert (plain_calls, checkpointed_calls) == ([2] * layers, [4] * layers)
    _assert_same_training(plain, checkpointed, tiny_base)


def test_only_the_chosen_layers_run_again(tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch) -> None:
    layers = tiny_base.lm.config.num_hidden_layers
    assert layers >= 2
    monkeypatch.delenv(ACTIVATION_BUDGET_VARIABLE, raising=False)
    plain, _ = _train_counting_layer_calls(tiny_base)
    # What layers_to_checkpoint picks for a step a little over the budget: one layer (chosen above, tested there).
    monkeypatch.setattr(loop, "layers_to_checkpoint", lambda _lm, _tokens: [layers - 1])
    checkpointed, calls = _train_counting_layer_calls(tiny_base)
    assert calls == [2] * (layers - 1) + [4]
    _assert_same_training(plain, checkpointed, tiny_base)


def _assert_same_training(
    plain: dict[str, torch.Tensor], checkpointed: dict[str, torch.Tensor], base: LoadedLM
) -> None:
    for name, value in plain.items():
        torch.testing.assert_close(checkpointed[name], value, rtol=1e-5, atol=1e-6)
    assert any(
        not torch.equal(value, fresh)
        for value, fresh in zip(plain.values(), lora_state(fresh_peft_lm(base)).values(), strict=True)
    )
