import copy
from typing import Any

import pytest
import torch

from tests.tiny_lm import synthetic_choice_rows
from worker.engine.data import ChoiceRow
from worker.engine.lm import LoadedLM
from worker.engine.methods.gradient_ascent import GradientAscent
from worker.engine.methods.random_label import RandomLabel
from worker.engine.training import ChoiceObjective, attach_lora, train_on_choices

ROWS = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(32, seed=0)]


def fresh_peft_lm(tiny_base: LoadedLM, seed: int = 0):
    torch.manual_seed(seed)
    return attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)


def lora_state(peft_lm) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in peft_lm.named_parameters() if "lora_" in name}


def test_lora_is_attached_to_every_linear_layer_but_the_head(tiny_base: LoadedLM) -> None:
    peft_lm = fresh_peft_lm(tiny_base)
    trainable = [name for name, p in peft_lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    wrapped = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("objective", [ChoiceObjective(), GradientAscent(), RandomLabel(seed=0)])
def test_a_training_step_changes_only_the_lora_parameters(tiny_base: LoadedLM, objective) -> None:
    peft_lm = fresh_peft_lm(tiny_base)
    base_before = {n: p.detach().clone() for n, p in peft_lm.named_parameters() if "lora_" not in n}
    lora_before = lora_state(peft_lm)
    result = train_on_choices(
        peft_lm, tiny_base.tokenizer, ROWS, objective, learning_rate=1e-2, epochs=1, batch_size=16, seed=0
    )
    # Two steps: LoRA's B starts at zero, so A only gets a gradient once B has moved.
    assert (result.steps, result.stop_reason) == (2, "epochs")
    lora_after = lora_state(peft_lm)
    changed = [n for n in lora_before if not torch.equal(lora_before[n], lora_after[n])]
    assert len(changed) == len(lora_before)
    for name, before in base_before.items():
        assert torch.equal(before, dict(peft_lm.named_parameters())[name]), name


def test_max_steps_and_after_epoch_stop_training(tiny_base: LoadedLM) -> None:
    peft_lm = fresh_peft_lm(tiny_base)
    kwargs: dict[str, Any] = dict(learning_rate=1e-3, epochs=5, batch_size=8, seed=0)
    result = train_on_choices(peft_lm, tiny_base.tokenizer, ROWS, ChoiceObjective(), max_steps=6, **kwargs)
    assert (result.steps, result.stop_reason) == (6, "max_steps")
    epochs_seen = []

    def stop_after_second(epoch: int, steps: int) -> bool:
        epochs_seen.append((epoch, steps))
        return epoch == 1

    result = train_on_choices(
        peft_lm, tiny_base.tokenizer, ROWS, ChoiceObjective(), after_epoch=stop_after_second, **kwargs
    )
    assert (result.steps, result.stop_reason) == (8, "chance")
    assert epochs_seen == [(0, 4), (1, 8)]


def test_training_is_seeded(tiny_base: LoadedLM) -> None:
    states = []
    for _ in range(2):
        peft_lm = fresh_peft_lm(tiny_base)
        train_on_choices(
            peft_lm, tiny_base.tokenizer, ROWS, RandomLabel(seed=3), learning_rate=1e-2, epochs=2, batch_size=8, seed=3
        )
        states.append(lora_state(peft_lm))
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_gradient_ascent_negates_the_nll() -> None:
    nll = torch.tensor(2.5)
    assert GradientAscent().loss(nll) == -nll
    assert ChoiceObjective().loss(nll) == nll
    assert GradientAscent().target(0, 0, ROWS[0]) == ROWS[0].answer


def test_random_labels_are_uniform_reproducible_and_redrawn_each_epoch() -> None:
    three = ChoiceRow("p", (" a", " b", " c"), 0)
    objective = RandomLabel(seed=7)
    draws = [objective.target(epoch, index, three) for epoch in range(3) for index in range(1000)]
    counts = [draws.count(choice) for choice in range(3)]
    assert all(900 <= count <= 1100 for count in counts), counts  # 1000 expected each, sd ≈ 26
    assert draws == [RandomLabel(seed=7).target(e, i, three) for e in range(3) for i in range(1000)]
    epoch0, epoch1 = draws[:1000], draws[1000:2000]
    assert sum(a != b for a, b in zip(epoch0, epoch1, strict=True)) > 500  # ≈ 2/3 differ
    assert [RandomLabel(seed=8).target(0, i, three) for i in range(1000)] != epoch0
