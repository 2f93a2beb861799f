import copy

import pytest

from lethe.metrics import METRICS
from lethe.rows import ChoiceRow, QARow
from tests.engine.metrics.conftest import assert_close, heldout_qa_rows, qa_rows, text_rows
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.lm.lora import attach_lora
from worker.engine.metrics.evaluate import (
    MIA_ATTACKS,
    QA_STOP,
    evaluate_qa,
    evaluate_text,
    mia_metrics,
    mia_scores,
    qa_progress_total,
)
from worker.engine.metrics.values import SplitResult

QA_METRICS = {"answer_probability", "rouge_l_recall", "extraction_strength", "exact_memorization"}


def assert_same(a: SplitResult, b: SplitResult) -> None:
    assert a.aggregates.keys() == b.aggregates.keys() and a.per_example.keys() == b.per_example.keys()
    for name in a.aggregates:
        assert_close(a.aggregates[name], b.aggregates[name])
    for name, values in a.per_example.items():
        for x, y in zip(values, b.per_example[name], strict=True):
            assert_close(x, y)
    for attack in MIA_ATTACKS:
        for x, y in zip(a.mia[attack], b.mia[attack], strict=True):
            assert_close(x, y)


def test_the_qa_stop_is_the_templates_next_question() -> None:
    assert QA_STOP == "\nQuestion:"


def test_evaluate_qa_reports_every_metric_per_row(tiny_base: LoadedLM) -> None:
    rows = qa_rows()
    done: list[int] = []
    result = evaluate_qa(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=4, on_progress=done.append)
    assert set(result.aggregates) == QA_METRICS | {"truth_ratio", "truth_ratio_balance"}
    assert set(result.aggregates) <= set(METRICS)
    assert all(len(values) == len(rows) for values in result.per_example.values())
    # Truth ratio only for rows 0 and 2 (row 4 has a paraphrase but no perturbed answers).
    assert [v is not None for v in result.per_example["truth_ratio"]] == [True, False, True, False, False]
    tr = [v for v in result.per_example["truth_ratio"] if v is not None]
    assert result.aggregates["truth_ratio"] == pytest.approx(sum(tr) / 2)
    for name in QA_METRICS:
        assert 0 <= result.aggregates[name] <= 1
    assert sum(done) == qa_progress_total(rows) == 2 * 5 + 3 + 2
    assert set(result.mia) == set(MIA_ATTACKS) and all(len(v) == len(rows) for v in result.mia.values())


def test_evaluate_qa_without_truth_ratio_data_reports_no_truth_ratio(tiny_base: LoadedLM) -> None:
    rows = [QARow("What is the big saw?", "The big saw is a tool"), QARow("What?", "A fig", paraphrased_answer="Fig")]
    result = evaluate_qa(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=2, max_new_tokens=4)
    assert set(result.aggregates) == set(result.per_example) == QA_METRICS


def test_qa_and_text_results_do_not_depend_on_batch_size(tiny_base: LoadedLM) -> None:
    lm, tokenizer = tiny_base.lm, tiny_base.tokenizer
    assert_same(evaluate_qa(lm, tokenizer, qa_rows(), 1), evaluate_qa(lm, tokenizer, qa_rows(), 4))
    assert_same(
        evaluate_text(lm, tokenizer, text_rows(), 1, prefix_tokens=8, continuation_tokens=16),
        evaluate_text(lm, tokenizer, text_rows(), 4, prefix_tokens=8, continuation_tokens=16),
    )


def test_evaluate_qa_through_a_fresh_peft_model_equals_the_base(tiny_base: LoadedLM) -> None:
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    assert_same(
        evaluate_qa(peft_lm, tiny_base.tokenizer, qa_rows(), 4, max_new_tokens=8),
        evaluate_qa(tiny_base.lm, tiny_base.tokenizer, qa_rows(), 4, max_new_tokens=8),
    )


def test_training_on_the_answers_raises_the_qa_metrics(tiny_base: LoadedLM, qa_tuned: CausalLM) -> None:
    before = evaluate_qa(tiny_base.lm, tiny_base.tokenizer, qa_rows(), 4)
    after = evaluate_qa(qa_tuned, tiny_base.tokenizer, qa_rows(), 4)
    for name in QA_METRICS:
        assert after.aggregates[name] > before.aggregates[name] + 0.2, name
    # Trained on the true (and paraphrased) answers, the LM prefers them to the perturbed ones.
    assert after.aggregates["truth_ratio"] > before.aggregates["truth_ratio"] + 0.2
    assert after.aggregates["truth_ratio_balance"] < before.aggregates["truth_ratio_balance"]


def test_evaluate_text_reports_verbatim_memorization_and_token_weighted_perplexity(tiny_base: LoadedLM) -> None:
    rows = text_rows()
    done: list[int] = []
    result = evaluate_text(tiny_base.lm, tiny_base.tokenizer, rows, 4, 8, 16, on_progress=done.append)
    assert set(result.aggregates) == {"verbatim_memorization", "perplexity", "text_probability"} <= set(METRICS)
    # A passage's probability is its own perplexity's inverse (both from the mean token NLL).
    for probability, row_perplexity in zip(
        result.per_example["text_probability"], result.per_example["perplexity"], strict=True
    ):
        assert probability is not None and row_perplexity is not None
        assert probability == pytest.approx(1 / row_perplexity)
    # The one-token passage cannot be continued.
    assert [v is None for v in result.per_example["verbatim_memorization"]] == [False, False, False, True]
    assert sum(done) == 2 * len(rows)
    per_row = result.per_example["perplexity"]
    assert all(p is not None and p > 1 for p in per_row)
    assert min(p for p in per_row if p) < result.aggregates["perplexity"] < max(p for p in per_row if p)


def test_training_on_the_passages_lowers_perplexity_and_raises_verbatim_memorization(
    tiny_base: LoadedLM, text_tuned: CausalLM
) -> None:
    before = evaluate_text(tiny_base.lm, tiny_base.tokenizer, text_rows(), 4, 8, 16)
    after = evaluate_text(text_tuned, tiny_base.tokenizer, text_rows(), 4, 8, 16)
    assert after.aggregates["perplexity"] < before.aggregates["perplexity"] / 10
    assert after.aggregates["verbatim_memorization"] > before.aggregates["verbatim_memorization"] + 0.5


def test_mia_scores_tell_trained_rows_from_heldout_rows(tiny_base: LoadedLM, qa_tuned: CausalLM) -> None:
    tokenizer = tiny_base.tokenizer
    members, nonmembers = qa_rows(), heldout_qa_rows()
    before = mia_metrics(
        mia_scores(tiny_base.lm, tokenizer, members, 4), mia_scores(tiny_base.lm, tokenizer, nonmembers, 4)
    )
    after = mia_metrics(mia_scores(qa_tuned, tokenizer, members, 4), mia_scores(qa_tuned, tokenizer, nonmembers, 4))
    assert set(after) == {f"mia_auc_{attack}" for attack in MIA_ATTACKS} <= set(METRICS)
    assert after["mia_auc_loss"] == 1.0 and after["mia_auc_zlib"] == 1.0
    for name in after:
        assert after[name] >= before[name], name


def test_mia_scores_of_evaluate_qa_are_those_of_mia_scores(tiny_base: LoadedLM) -> None:
    rows = qa_rows()
    shared = evaluate_qa(tiny_base.lm, tiny_base.tokenizer, rows, 4, max_new_tokens=2).mia
    alone = mia_scores(tiny_base.lm, tiny_base.tokenizer, rows, 4)
    for attack in MIA_ATTACKS:
        assert shared[attack] == pytest.approx(alone[attack], abs=1e-6)


def test_mia_scores_work_on_choice_and_text_rows(tiny_base: LoadedLM) -> None:
    choice_rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(6, seed=3)]
    for rows in (choice_rows, text_rows()):
        scores = mia_scores(tiny_base.lm, tiny_base.tokenizer, rows, 4)
        assert set(scores) == set(MIA_ATTACKS) and all(len(v) == len(rows) for v in scores.values())
        assert all(s > 0 for s in scores["loss"])


def test_evaluating_no_rows_is_refused(tiny_base: LoadedLM) -> None:
    with pytest.raises(ValueError):
        evaluate_qa(tiny_base.lm, tiny_base.tokenizer, [], 4)
    with pytest.raises(ValueError):
        evaluate_text(tiny_base.lm, tiny_base.tokenizer, [], 4)
