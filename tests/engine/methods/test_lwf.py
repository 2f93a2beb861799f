import copy
import math

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from transformers import PreTrainedModel

from lethe.methods import LWFParams
from lethe.rows import ChoiceRow, TextRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora
from worker.engine.methods.gradient_ascent import GradientAscent
from worker.engine.methods.lwf import (
    LearningWithForgetting,
    diagonal_fisher,
    forgetting_confidence,
    prompt_ids,
    top_fraction,
)
from worker.engine.training.batches import Batch, collate, examples_of
from worker.engine.training.logprobs import mean_nll
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective, Step, TrainContext

LIMIT = 128
ROWS = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(128, seed=0)]
# Forget what the LM knows about fruit, keep what it knows about tools.
FORGET = [row for row in ROWS if row.target == " fruit"][:24]
RETAIN = [row for row in ROWS if row.target == " tool"][:24]
PARAMS = LWFParams.model_validate({"batch_size": 8, "max_new_tokens": 8, "fisher_rows": 16})


@pytest.fixture(scope="module")
def taught_lm(tiny_base: LoadedLM) -> PreTrainedModel:
    """The tiny LM fine-tuned on the task and merged, so that its greedy continuations name the categories."""
    peft_lm = fresh_peft_lm(tiny_base.lm)
    train(peft_lm, tiny_base.tokenizer, Objective(), ROWS, [], Schedule(1e-2, 10, 16), seed=0, limit=LIMIT)
    return peft_lm.merge_and_unload()


def fresh_peft_lm(lm: PreTrainedModel) -> PeftModel:
    torch.manual_seed(0)
    return attach_lora(copy.deepcopy(lm), rank=4, alpha=8)


def prepared(peft_lm: PeftModel, tiny_base: LoadedLM, params: LWFParams = PARAMS) -> LearningWithForgetting:
    objective = LearningWithForgetting(params)
    objective.prepare(TrainContext(peft_lm, tiny_base.tokenizer, FORGET, RETAIN, LIMIT, seed=0))
    return objective


def batch_of(tiny_base: LoadedLM, rows: list[ChoiceRow]) -> Batch:
    return collate(examples_of(tiny_base.tokenizer, rows, LIMIT), tiny_base.tokenizer.pad_token_id, torch.device("cpu"))


def target_nll(peft_lm: PeftModel, tiny_base: LoadedLM, rows: list[ChoiceRow]) -> float:
    """Mean NLL of the rows' true targets."""
    batch = batch_of(tiny_base, rows)
    with torch.no_grad():
        logits = peft_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float(mean_nll(logits, batch.labels))


def test_params_default_and_always_need_retain() -> None:
    params = LWFParams.model_validate({})
    assert (params.top_fraction, params.interval, params.max_new_tokens) == (0.5, 2, 32)
    assert params.needs_retain()
    for bad in [{"interval": 1}, {"top_fraction": 0}, {"top_fraction": 1.5}, {"max_new_tokens": 0}, {"unknown": 1}]:
        with pytest.raises(ValidationError):
            LWFParams.model_validate(bad)


def test_diagonal_fisher_is_the_mean_squared_gradient() -> None:
    per_example = [
        [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])],
        [torch.tensor([3.0, -4.0]), torch.tensor([[2.0]])],
    ]
    fisher = diagonal_fisher(per_example)
    assert torch.equal(fisher[0], torch.tensor([5.0, 10.0]))
    assert torch.equal(fisher[1], torch.tensor([[2.0]]))
    with pytest.raises(ValueError):
        diagonal_fisher([])


def test_forgetting_confidence_weights_squared_gradients_by_the_fisher() -> None:
    fisher = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0, 0.0])]
    # 1·1² + 2·(−1)² + 3·2² + 0·100² = 15: a large step along a direction the retain data never uses costs nothing.
    assert forgetting_confidence(fisher, [torch.tensor([[1.0, -1.0]]), torch.tensor([2.0, 100.0])]) == 15.0
    assert forgetting_confidence(fisher, [torch.zeros(1, 2), torch.zeros(2)]) == 0.0


def test_top_fraction_keeps_the_most_confident_texts() -> None:
    confidences = [0.1, 0.5, 0.3, 0.9, 0.5]
    assert top_fraction(confidences, 0.4) == [1, 3]  # ceil(2.0) = 2
    assert top_fraction(confidences, 0.5) == [1, 3, 4]  # ceil(2.5) = 3
    assert top_fraction(confidences, 0.01) == [3]  # never fewer than one
    assert top_fraction(confidences, 1.0) == [0, 1, 2, 3, 4]
    assert top_fraction([0.5, 0.5, 0.5], 0.5) == [0, 1]  # ties go to the earlier row


def test_text_rows_are_prompted_with_the_beginning_of_the_passage(tiny_base: LoadedLM) -> None:
    tokenizer = tiny_base.tokenizer
    passage = "The red apple is a fruit and the old saw is a tool."
    ids = tokenizer.encode(passage, add_special_tokens=False)
    assert prompt_ids(tokenizer, TextRow(passage), 4) == ids[:4]
    assert prompt_ids(tokenizer, TextRow(passage), 1000) == ids[: len(ids) // 2]
    assert prompt_ids(tokenizer, FORGET[0], 4) == tokenizer.encode(FORGET[0].prompt, add_special_tokens=False)


def test_generation_is_greedy_deterministic_and_by_the_base_lm(taught_lm: PreTrainedModel, tiny_base: LoadedLM) -> None:
    first = prepared(fresh_peft_lm(taught_lm), tiny_base)
    assert len(first.generated) == len(first.examples) == len(FORGET)
    # The taught LM continues "The red apple is a" with its category: the continuation is of the prompt.
    assert sum(text.startswith(" fruit") for text in first.generated) >= 0.8 * len(FORGET)
    prompt = tiny_base.tokenizer.encode(FORGET[0].prompt, add_special_tokens=False)
    assert first.examples[0].ids[: len(prompt)] == tuple(prompt)
    assert 1 <= first.examples[0].n_target <= PARAMS.max_new_tokens

    # One prompt at a time (no padding) gives the same texts as left-padded batches.
    one_by_one = prepared(fresh_peft_lm(taught_lm), tiny_base, PARAMS.model_copy(update={"batch_size": 1}))
    assert one_by_one.generated == first.generated

    # A trained adapter does not change what is generated: the base LM (adapter disabled) generates.
    peft_lm = fresh_peft_lm(taught_lm)
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=1.0)
    assert prepared(peft_lm, tiny_base).generated == first.generated


def test_the_most_confident_fraction_is_selected_for_unlearning(
    taught_lm: PreTrainedModel, tiny_base: LoadedLM
) -> None:
    objective = prepared(fresh_peft_lm(taught_lm), tiny_base)
    confidences = objective.confidences
    assert len(confidences) == len(FORGET)
    assert all(math.isfinite(c) and c >= 0 for c in confidences) and len(set(confidences)) > 1
    assert objective.selected == top_fraction(confidences, PARAMS.top_fraction)
    assert len(objective.selected) == math.ceil(PARAMS.top_fraction * len(FORGET))
    lowest_selected = min(confidences[i] for i in objective.selected)
    assert all(confidences[i] <= lowest_selected for i in set(range(len(FORGET))) - set(objective.selected))
    # Training sees exactly the selected generated texts, whatever the true examples are.
    assert objective.forget_examples(0, []) == [objective.examples[i] for i in objective.selected]
    # The same seed gives the same Fisher sample and so the same confidences.
    assert prepared(fresh_peft_lm(taught_lm), tiny_base).confidences == confidences


def test_every_interval_th_step_fine_tunes_on_retain(taught_lm: PreTrainedModel, tiny_base: LoadedLM) -> None:
    objective = LearningWithForgetting(PARAMS.model_copy(update={"interval": 3}))
    assert [objective.is_tuning_step(n) for n in range(6)] == [False, False, True, False, False, True]
    peft_lm = fresh_peft_lm(taught_lm)
    forget, retain = batch_of(tiny_base, FORGET[:4]), batch_of(tiny_base, RETAIN[:4])

    ascent = objective.losses(Step(peft_lm, forget, retain, number=0, epoch=0))
    logits = peft_lm(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits
    assert ascent.retain is None
    assert torch.allclose(ascent.forget, -mean_nll(logits, forget.labels))

    tuning = objective.losses(Step(peft_lm, forget, retain, number=2, epoch=0))
    logits = peft_lm(input_ids=retain.input_ids, attention_mask=retain.attention_mask).logits
    assert tuning.retain is not None and torch.allclose(tuning.retain, mean_nll(logits, retain.labels))
    assert float(tuning.forget.detach()) == 0.0 and tuning.forget.requires_grad


def test_lwf_forgets_and_spares_retain_more_than_gradient_ascent(
    taught_lm: PreTrainedModel, tiny_base: LoadedLM
) -> None:
    schedule = Schedule(learning_rate=1e-2, epochs=100, batch_size=8, max_steps=24)
    before = fresh_peft_lm(taught_lm)
    forget_before, retain_before = target_nll(before, tiny_base, FORGET), target_nll(before, tiny_base, RETAIN)
    after = {}
    for name, objective in [("lwf", LearningWithForgetting(PARAMS)), ("gradient_ascent", GradientAscent())]:
        peft_lm = fresh_peft_lm(taught_lm)
        result = train(peft_lm, tiny_base.tokenizer, objective, FORGET, RETAIN, schedule, seed=0, limit=LIMIT)
        assert result.steps == 24
        after[name] = (target_nll(peft_lm, tiny_base, FORGET), target_nll(peft_lm, tiny_base, RETAIN))
    # Unlearning the LM's own continuations raises the NLL of the true targets they begin with.
    assert after["lwf"][0] > forget_before + 0.3
    # Half the steps tune on retain: retain moves less than under plain gradient ascent with the same budget.
    assert abs(after["lwf"][1] - retain_before) < after["gradient_ascent"][1] - retain_before
