import copy
import math

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from transformers import PreTrainedModel

from lethe.methods import METHODS, LWFParams
from lethe.rows import ChoiceRow, TextRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget.run import ForgetPlan, run_forget
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import LoraState, attach_lora, load_lora_state, lora_state, reference_adapter
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
from worker.engine.training.objective import LossTerms, Objective, Step, TrainContext

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


@pytest.fixture(scope="module")
def fine_tuned(tiny_base: LoadedLM) -> LoraState:
    """A LoRA adapter on the untaught tiny LM fine-tuned on the task: the job's fine-tune stage."""
    peft_lm = fresh_peft_lm(tiny_base.lm)
    train(peft_lm, tiny_base.tokenizer, Objective(), ROWS, [], Schedule(1e-2, 10, 16), seed=0, limit=LIMIT)
    return lora_state(peft_lm)


def fresh_peft_lm(lm: PreTrainedModel) -> PeftModel:
    torch.manual_seed(0)
    return attach_lora(copy.deepcopy(lm), rank=4, alpha=8)


def prepared(
    peft_lm: PeftModel, tiny_base: LoadedLM, params: LWFParams = PARAMS, reference: LoraState | None = None
) -> LearningWithForgetting:
    """LWF prepared as `train` prepares it: with the reference slot (the adapter before forgetting) in place."""
    objective = LearningWithForgetting(params)
    with reference_adapter(peft_lm, reference):
        objective.prepare(TrainContext(peft_lm, tiny_base.tokenizer, FORGET, RETAIN, LIMIT, seed=0))
    return objective


def greedy_texts(lm: PreTrainedModel, tiny_base: LoadedLM, n_tokens: int) -> list[str]:
    """Each forget row's greedy continuation by `lm`, one prompt at a time, with transformers' generate."""
    texts = []
    for row in FORGET:
        prompt = torch.tensor([tiny_base.tokenizer.encode(row.prompt, add_special_tokens=False)])
        with torch.no_grad():
            output = lm.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n_tokens,
                do_sample=False,
                eos_token_id=tiny_base.tokenizer.eos_token_id,
                pad_token_id=tiny_base.tokenizer.pad_token_id,
            )
        texts.append(tiny_base.tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True))
    return texts


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
    assert (params.top_fraction, params.interval, params.max_new_tokens) == (0.5, 1, 32)
    assert params.needs_retain()
    for bad in [{"interval": 0}, {"top_fraction": 0}, {"top_fraction": 1.5}, {"max_new_tokens": 0}, {"unknown": 1}]:
        with pytest.raises(ValidationError):
            LWFParams.model_validate(bad)
    # An epoch passes over the retain rows; an unlearning step follows every `interval` learning steps but the last.
    assert params.epoch_rows(30, 200) == 200
    assert [LWFParams(interval=3).interleaved_steps(n) for n in (0, 1, 3, 4, 50)] == [0, 0, 0, 1, 16]


def test_lwf_is_published_as_experimental_with_what_is_reconstructed() -> None:
    spec = METHODS.get("lwf")
    assert spec.experimental and spec.reconstructed and "reconstructed" in spec.reconstructed.lower()
    assert "half" in spec.description and "never unlearned" in spec.description
    assert not any(METHODS.get(name).experimental for name in METHODS.names() if name != "lwf")


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


def test_generation_is_greedy_deterministic_and_by_the_lm_before_forgetting(
    fine_tuned: LoraState, tiny_base: LoadedLM
) -> None:
    # After a fine-tune the texts are the fine-tuned LM's, whatever the trained adapter has become since.
    peft_lm = fresh_peft_lm(tiny_base.lm)
    load_lora_state(peft_lm, fine_tuned)
    fine_tuned_lm = copy.deepcopy(peft_lm).merge_and_unload()
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=1.0)
    first = prepared(peft_lm, tiny_base, reference=fine_tuned)
    assert len(first.generated) == len(first.examples) == len(FORGET)
    assert first.generated == greedy_texts(fine_tuned_lm, tiny_base, PARAMS.max_new_tokens)
    # The fine-tuned LM knows the task: it continues "The red apple is a" with its category; the base LM does not.
    assert sum(text.startswith(" fruit") for text in first.generated) >= 0.8 * len(FORGET)
    base_texts = greedy_texts(tiny_base.lm, tiny_base, PARAMS.max_new_tokens)
    assert sum(text.startswith(" fruit") for text in base_texts) < 0.5 * len(FORGET)
    prompt = tiny_base.tokenizer.encode(FORGET[0].prompt, add_special_tokens=False)
    assert first.examples[0].ids[: len(prompt)] == tuple(prompt)
    assert 1 <= first.examples[0].n_target <= PARAMS.max_new_tokens

    # One prompt at a time (no padding) gives the same texts as left-padded batches.
    one_by_one = prepared(peft_lm, tiny_base, PARAMS.model_copy(update={"batch_size": 1}), reference=fine_tuned)
    assert one_by_one.generated == first.generated

    # Without a fine-tune the LM before forgetting is the base LM.
    assert prepared(peft_lm, tiny_base).generated == base_texts


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
    # Epochs pass over the learning data, the retain rows, whatever the forget examples are.
    assert objective.forget_examples(0, []) == examples_of(tiny_base.tokenizer, RETAIN, LIMIT)
    # The same seed gives the same Fisher sample and so the same confidences.
    assert prepared(fresh_peft_lm(taught_lm), tiny_base).confidences == confidences


class Recording(LearningWithForgetting):
    """LWF that keeps, per step, its number, its batch's token ids and its loss terms."""

    def __init__(self, params: LWFParams) -> None:
        super().__init__(params)
        self.steps: list[tuple[int, list[tuple[int, ...]], LossTerms, float]] = []

    def losses(self, step: Step) -> LossTerms:
        terms = super().losses(step)
        rows = [
            tuple(int(t) for t, m in zip(ids, mask, strict=True) if m)
            for ids, mask in zip(step.forget.input_ids.tolist(), step.forget.attention_mask.tolist(), strict=True)
        ]
        nll = float(step.target_logits(step.forget).mean_nll().detach())
        self.steps.append((step.number, rows, terms, nll))
        return terms


def test_training_passes_over_the_learning_data_and_ascends_on_the_selected_texts_every_interval_steps(
    taught_lm: PreTrainedModel, tiny_base: LoadedLM
) -> None:
    # 24 retain rows in batches of 8: 3 learning steps an epoch, 2 epochs = 6; interval 2: an unlearning step after
    # the 2nd and the 4th learning step (the one due after the 6th, the last, never comes): 8 steps.
    params = PARAMS.model_copy(update={"interval": 2})
    objective = Recording(params)
    peft_lm = fresh_peft_lm(taught_lm)
    schedule = Schedule(learning_rate=1e-2, epochs=2, batch_size=8)
    result = train(peft_lm, tiny_base.tokenizer, objective, FORGET, RETAIN, schedule, seed=0, limit=LIMIT)
    assert result.steps == 8 and [number for number, *_ in objective.steps] == list(range(8))

    # Two selected rows may have generated the same text: compared as token sequences, with their counts.
    texts = [objective.examples[i].ids for i in objective.selected]
    learning = [example.ids for example in examples_of(tiny_base.tokenizer, RETAIN, LIMIT)]
    unlearned: list[tuple[int, ...]] = []
    for number, rows, terms, nll in objective.steps:
        if number in (2, 5):  # (s + 1) % (interval + 1) == 0
            # A gradient-ascent step on generated texts of the selected rows: loss = −NLL of the batch.
            assert all(row in texts for row in rows)
            unlearned += rows
            assert terms.retain is None and float(terms.forget.detach()) == pytest.approx(-nll, rel=1e-5)
        else:
            # A fine-tuning step on the learning data: loss = NLL, as a retain term, and no forget loss.
            assert all(row in learning for row in rows)
            assert terms.retain is not None and float(terms.retain.detach()) == pytest.approx(nll, rel=1e-5)
            assert float(terms.forget.detach()) == 0.0
    # Each epoch's learning steps pass over every retain row once.
    for epoch_steps in ([0, 1, 3], [4, 6, 7]):
        seen = [row for number, rows, *_ in objective.steps if number in epoch_steps for row in rows]
        assert sorted(seen) == sorted(learning)
    # 12 selected texts in batches of 8: the two unlearning steps take one seeded pass over them, each text once.
    assert sorted(unlearned) == sorted(texts) and objective.selected == objective.unlearned_rows(8)
    assert objective.outcome(8) == {
        "forget_rows": 24,
        "selected_rows": 12,
        "unlearned_rows": 12,
        "never_unlearned_rows": 12,
        "never_unlearned": sorted(set(range(24)) - set(objective.selected)),
    }
    # Stopped after 3 steps, only the first unlearning step's 8 texts were unlearned.
    assert objective.outcome(3)["unlearned_rows"] == 8 and objective.outcome(2)["unlearned_rows"] == 0


def test_a_forget_run_reports_the_rows_lwf_never_unlearned(tiny_base: LoadedLM) -> None:
    plan = ForgetPlan("lwf", {"max_steps": 4, "max_new_tokens": 4, "stop_at_target": False}, None, False, seed=0)
    outcome = run_forget(tiny_base, plan, FORGET[:16], FORGET[16:], {"tools": RETAIN}, lambda stage, f: None)
    # top_fraction 0.5 of 16 rows: 8 selected, 8 never unlearned; steps 1 and 3 (interval 1) ascend on all 8.
    assert outcome.method_outcome["never_unlearned_rows"] == 8
    assert outcome.method_outcome["unlearned_rows"] == 8
    # The job's outcome of forgetting says it, in its field and in words.
    assert outcome.forgetting.never_unlearned_rows == 8
    assert "never unlearned 8 of the forget_train rows" in outcome.forgetting.summary()


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
    # Half the steps fine-tune on retain: retain moves less than under plain gradient ascent with the same budget.
    assert abs(after["lwf"][1] - retain_before) < after["gradient_ascent"][1] - retain_before
