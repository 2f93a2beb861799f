"""The training loop: only the LoRA parameters move, the schedule and the evaluator stop it, it is seeded."""

import contextlib
import copy

import pytest
import torch
from peft.helpers import disable_input_dtype_casting
from peft.tuners.tuners_utils import BaseTunerLayer

from lethe.rows import ChoiceRow, QARow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.inputs import max_length
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora, lora_state
from worker.engine.methods.gradient_ascent import GradientAscent
from worker.engine.methods.random_label import RandomLabel
from worker.engine.training import loop, packing
from worker.engine.training.batches import collate, examples_of
from worker.engine.training.logprobs import mean_nll
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective, Plugins, TrainContext

ROWS = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(32, seed=0)]
RETAIN = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(16, seed=1)]


def fresh_peft_lm(tiny_base: LoadedLM, seed: int = 0):
    torch.manual_seed(seed)
    return attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)


def run(tiny_base: LoadedLM, peft_lm, objective: Objective, schedule: Schedule, **kwargs):
    limit = max_length(tiny_base.lm, tiny_base.tokenizer)
    return train(peft_lm, tiny_base.tokenizer, objective, ROWS, RETAIN, schedule, seed=0, limit=limit, **kwargs)


@pytest.mark.parametrize("objective", [Objective(), GradientAscent(), RandomLabel(seed=0)])
def test_a_training_step_changes_only_the_lora_parameters(tiny_base: LoadedLM, objective: Objective) -> None:
    peft_lm = fresh_peft_lm(tiny_base)
    base_before = {n: p.detach().clone() for n, p in peft_lm.named_parameters() if "lora_" not in n}
    lora_before = lora_state(peft_lm)
    result = run(tiny_base, peft_lm, objective, Schedule(learning_rate=1e-2, epochs=1, batch_size=16))
    # Two steps: LoRA's B starts at zero, so A only gets a gradient once B has moved.
    assert (result.steps, result.stop_reason) == (2, "epochs")
    lora_after = lora_state(peft_lm)
    changed = [n for n in lora_before if not torch.equal(lora_before[n], lora_after[n])]
    assert len(changed) == len(lora_before)
    for name, before in base_before.items():
        assert torch.equal(before, dict(peft_lm.named_parameters())[name]), name


def test_max_steps_and_the_evaluator_stop_training(tiny_base: LoadedLM) -> None:
    schedule = Schedule(learning_rate=1e-3, epochs=5, batch_size=8, max_steps=6)
    result = run(tiny_base, fresh_peft_lm(tiny_base), Objective(), schedule)
    assert (result.steps, result.stop_reason) == (6, "max_steps")

    seen: list[int] = []

    def stop_at_eight(steps: int) -> str | None:
        seen.append(steps)
        return "target" if steps == 8 else None

    per_epoch = Schedule(learning_rate=1e-3, epochs=5, batch_size=8)
    result = run(tiny_base, fresh_peft_lm(tiny_base), Objective(), per_epoch, evaluate=stop_at_eight)
    assert (result.steps, result.stop_reason) == (8, "target")
    assert seen == [4, 8]

    seen.clear()
    every_three = Schedule(learning_rate=1e-3, epochs=5, batch_size=8, evaluate_every=3)
    result = run(tiny_base, fresh_peft_lm(tiny_base), Objective(), every_three, evaluate=lambda s: seen.append(s))
    assert (result.steps, result.stop_reason) == (20, "epochs")
    assert seen == [3, 6, 9, 12, 15, 18]


def test_training_is_seeded(tiny_base: LoadedLM) -> None:
    states = []
    for _ in range(2):
        peft_lm = fresh_peft_lm(tiny_base)
        run(tiny_base, peft_lm, RandomLabel(seed=3), Schedule(learning_rate=1e-2, epochs=2, batch_size=8))
        states.append(lora_state(peft_lm))
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_gradient_ascent_raises_the_nll_and_finetuning_lowers_it(tiny_base: LoadedLM) -> None:
    tokenizer = tiny_base.tokenizer
    batch = collate(examples_of(tokenizer, ROWS, 512), tokenizer.pad_token_id, torch.device("cpu"))

    def nll(peft_lm) -> float:
        with torch.no_grad():
            return float(
                mean_nll(peft_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels)
            )

    schedule = Schedule(learning_rate=1e-2, epochs=3, batch_size=8)
    before = nll(fresh_peft_lm(tiny_base))
    ascended, finetuned = fresh_peft_lm(tiny_base), fresh_peft_lm(tiny_base)
    run(tiny_base, ascended, GradientAscent(), schedule)
    run(tiny_base, finetuned, Objective(), schedule)
    assert nll(ascended) > before + 0.5
    assert nll(finetuned) < before - 0.3


def test_random_labels_are_uniform_reproducible_and_redrawn_each_epoch(tiny_base: LoadedLM) -> None:
    three = [ChoiceRow("p", (" a", " b", " c"), 0)] * 1000
    objective = RandomLabel(seed=7)
    objective.prepare(TrainContext(fresh_peft_lm(tiny_base), tiny_base.tokenizer, three, [], 512, 0))
    draws = [objective.label(epoch, index) for epoch in range(3) for index in range(1000)]
    counts = [draws.count(choice) for choice in range(3)]
    assert all(900 <= count <= 1100 for count in counts), counts  # 1000 expected each, sd ≈ 26
    epoch0, epoch1 = draws[:1000], draws[1000:2000]
    assert sum(a != b for a, b in zip(epoch0, epoch1, strict=True)) > 500  # ≈ 2/3 differ
    other = RandomLabel(seed=8)
    other.prepare(TrainContext(fresh_peft_lm(tiny_base), tiny_base.tokenizer, three, [], 512, 0))
    assert [other.label(0, i) for i in range(1000)] != epoch0
    # The examples trained on are the drawn choices.
    examples = objective.forget_examples(0, [])
    assert [examples[i] for i in range(5)] == [objective.choice_examples[i][epoch0[i]] for i in range(5)]


def test_random_label_refuses_rows_without_choices(tiny_base: LoadedLM) -> None:
    context = TrainContext(fresh_peft_lm(tiny_base), tiny_base.tokenizer, [QARow("q", "a")], [], 512, 0)
    with pytest.raises(ValueError, match="random_label needs choice rows"):
        RandomLabel(seed=0).prepare(context)


def test_methods_that_need_retain_rows_say_so(tiny_base: LoadedLM) -> None:
    class NeedsRetain(Objective):
        uses_retain = True

    limit = max_length(tiny_base.lm, tiny_base.tokenizer)
    schedule = Schedule(learning_rate=1e-3, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="needs retain rows"):
        train(fresh_peft_lm(tiny_base), tiny_base.tokenizer, NeedsRetain(), ROWS, [], schedule, seed=0, limit=limit)
    plugins = Plugins(retain_terms=[lambda step: torch.zeros(())])
    with pytest.raises(ValueError, match="needs retain rows"):
        train(
            fresh_peft_lm(tiny_base),
            tiny_base.tokenizer,
            Objective(),
            ROWS,
            [],
            schedule,
            seed=0,
            limit=limit,
            plugins=plugins,
        )


def test_under_autocast_lora_layers_skip_the_input_cast_and_train_the_same(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With bf16 weights under autocast (as on a GPU), the LoRA layers take their bf16 inputs as they are: the same
    updates as when peft first casts each input to the fp32 LoRA weights' dtype, without that copy."""
    seen: list[bool] = []

    def train_bf16() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        peft_lm = attach_lora(copy.deepcopy(tiny_base.lm).to(torch.bfloat16), rank=4, alpha=8)
        layer = next(m for m in peft_lm.modules() if hasattr(m, "cast_input_dtype_enabled") and hasattr(m, "lora_A"))
        handle = layer.register_forward_pre_hook(lambda module, _args: seen.append(module.cast_input_dtype_enabled))
        try:
            schedule = Schedule(learning_rate=1e-2, epochs=1, batch_size=8, max_steps=2)
            run(tiny_base, peft_lm, GradientAscent(), schedule, mixed_precision=True)
        finally:
            handle.remove()
        return lora_state(peft_lm)

    uncast = train_bf16()
    assert seen and not any(seen)
    monkeypatch.setattr(loop, "disable_input_dtype_casting", lambda _lm, active: contextlib.nullcontext())
    seen.clear()
    cast = train_bf16()
    assert seen and all(seen)
    assert all(torch.equal(uncast[name], cast[name]) for name in uncast)


def test_packing_is_checked_with_input_casts_even_inside_a_training_step(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`packing._measure` runs without autocast, where LoRA layers of fp32 weights on a bf16 LM must cast their
    inputs: it does so also when the first packed forward comes inside a step that turned the casts off."""
    monkeypatch.setattr(packing, "_checked", {})
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm).to(torch.bfloat16), rank=4, alpha=8)
    with disable_input_dtype_casting(peft_lm):
        assert packing.packs_correctly(peft_lm)
        # and the step's setting is back once the check is done
        assert not any(m.cast_input_dtype_enabled for m in peft_lm.modules() if isinstance(m, BaseTunerLayer))
