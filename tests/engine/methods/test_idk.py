"""idk: refusals drawn per row and epoch, continued like the row's target, preferred to the forget target."""

import math

import pytest
import torch

from lethe.methods import IdkParams
from lethe.rows import ChoiceRow, QARow, Row, TextRow
from tests.engine.methods.helpers import LIMIT, Task, batch_of, fresh_peft_lm, step_of, train_method
from worker.engine.methods.idk import Idk, refusal_continuation, tofu_refusals
from worker.engine.training.logprobs import sequence_logprob
from worker.engine.training.objective import TrainContext


def prepared(task: Task, rows: list, params: IdkParams, seed: int = 0) -> Idk:
    objective = Idk(params, seed)
    objective.prepare(TrainContext(fresh_peft_lm(task), task.tokenizer, rows, task.retain, LIMIT, seed))
    return objective


def test_the_default_refusals_are_tofus() -> None:
    refusals = tofu_refusals()
    assert len(refusals) == 100 and len(set(refusals)) == 100
    assert refusals[0] == "I'm not certain about that."
    assert Idk(IdkParams.model_validate({}), 0).refusals == refusals
    assert Idk(IdkParams.model_validate({"refusals": ["No idea."]}), 0).refusals == ["No idea."]


def test_refusals_are_drawn_uniformly_reproducibly_and_anew_each_epoch() -> None:
    objective = Idk(IdkParams.model_validate({"refusals": ["a", "b", "c", "d"]}), seed=5)
    draws = [objective.refusal(epoch, index) for epoch in range(2) for index in range(1000)]
    assert all(400 <= draws.count(r) <= 600 for r in "abcd")  # 500 expected each, sd ≈ 19
    assert sum(a != b for a, b in zip(draws[:1000], draws[1000:], strict=True)) > 600  # ≈ 3/4 differ
    assert [
        Idk(IdkParams.model_validate({"refusals": ["a", "b", "c", "d"]}), seed=5).refusal(0, i) for i in range(1000)
    ] == draws[:1000]


def test_a_refusal_continues_the_context_as_the_target_does(task: Task) -> None:
    assert refusal_continuation("Question: q\nAnswer:", "No idea.") == " No idea."
    assert refusal_continuation("The red apple is a ", "No idea.") == "No idea."
    rows: list[Row] = [QARow("What is a pear?", "a fruit"), ChoiceRow("The red apple is a", (" fruit", " tool"), 0)]
    objective = prepared(task, rows, IdkParams.model_validate({"refusals": ["I do not know."]}))
    objective.forget_examples(0, [])
    for example, row in zip(objective.refusal_examples, rows, strict=True):
        assert task.tokenizer.decode(list(example.ids[-example.n_target :])) == " I do not know."
        assert task.tokenizer.decode(list(example.ids[: -example.n_target])) == row.context


def test_text_rows_are_refused(task: Task) -> None:
    with pytest.raises(ValueError, match="choice or qa rows"):
        prepared(task, [TextRow("a passage")], IdkParams.model_validate({}))


def test_the_dpo_loss_at_init_is_2_over_beta_log_2(task: Task) -> None:
    objective = prepared(task, task.forget[:4], IdkParams.model_validate({"alpha": 0}))
    objective.forget_examples(0, [])
    loss = objective.losses(step_of(task, fresh_peft_lm(task), task.forget[:4])).forget
    assert float(loss.detach()) == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)


def test_training_prefers_the_refusal_to_the_forget_target(task: Task) -> None:
    refusal = "I do not know."
    refusal_rows = [
        ChoiceRow(row.context, (refusal_continuation(row.context, refusal), " x"), 0) for row in task.forget
    ]

    def margin(lm) -> float:
        def logprob(rows) -> float:
            batch = batch_of(task.tokenizer, rows)
            with torch.no_grad():
                logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            return float(sequence_logprob(logits, batch.labels)[0].mean())

        return logprob(refusal_rows) - logprob(task.forget)

    before = margin(task.lm)
    after = margin(train_method(task, "idk", {"refusals": [refusal]}))
    assert after > before + 10
