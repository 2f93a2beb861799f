import copy
import statistics

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from lethe.metrics import METRICS
from lethe.rows import QA_TEMPLATE, ChoiceRow, QARow
from tests.engine.metrics.conftest import assert_close, fine_tune, heldout_qa_rows, qa_rows, text_rows
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.lm.lora import attach_lora
from worker.engine.metrics.evaluate import (
    MIA_ATTACKS,
    QA_STOP,
    MembershipReference,
    evaluate_qa,
    evaluate_text,
    membership_metrics,
    mia_metrics,
    mia_scores,
    qa_progress_total,
)
from worker.engine.metrics.values import SplitResult

QA_METRICS = {"answer_probability", "rouge_l_recall", "extraction_strength", "exact_memorization"}
TRUTH_RATIO_METRICS = {
    "truth_ratio",
    "truth_ratio_balance",
    "truth_ratio_open_unlearning",
    "truth_ratio_balance_open_unlearning",
}


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
    assert set(result.aggregates) == QA_METRICS | TRUTH_RATIO_METRICS
    assert set(result.aggregates) <= set(METRICS)
    assert all(len(values) == len(rows) for values in result.per_example.values())
    # Truth ratio only for rows 0 and 2 (row 4 has a paraphrase but no perturbed answers).
    for name in TRUTH_RATIO_METRICS:
        assert [v is not None for v in result.per_example[name]] == [True, False, True, False, False], name
    assert [r is not None for r in result.truth_ratios] == [True, False, True, False, False]
    # The raw R behind the aggregated forms.
    for ratio, clipped, balance in zip(
        result.truth_ratios, result.per_example["truth_ratio"], result.per_example["truth_ratio_balance"], strict=True
    ):
        if ratio is not None:
            assert clipped == pytest.approx(max(0.0, 1 - ratio)) and balance == pytest.approx(min(ratio, 1 / ratio))
    for name in QA_METRICS:
        assert 0 <= result.aggregates[name] <= 1
    assert sum(done) == qa_progress_total(rows) == 2 * 5 + 3 + 2
    assert set(result.mia) == set(MIA_ATTACKS) and all(len(v) == len(rows) for v in result.mia.values())


def test_evaluate_qa_without_truth_ratio_data_reports_no_truth_ratio(tiny_base: LoadedLM) -> None:
    rows = [QARow("What is the big saw?", "The big saw is a tool"), QARow("What?", "A fig", paraphrased_answer="Fig")]
    result = evaluate_qa(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=2, max_new_tokens=4)
    assert set(result.aggregates) == set(result.per_example) == QA_METRICS
    assert result.truth_ratios == []


def _manual_answer_log_probs(
    lm: CausalLM, tokenizer: PreTrainedTokenizerBase, question: str, answer: str
) -> tuple[np.ndarray, np.ndarray]:
    """log p of each answer token after the question, and whether it is the argmax: one plain forward pass of the
    unpadded sequence, in float64, independent of the engine's batching, padding and truncation."""
    context = tokenizer.encode(QA_TEMPLATE.format(question=question), add_special_tokens=False)
    whole = tokenizer.encode(QA_TEMPLATE.format(question=question) + " " + answer, add_special_tokens=False)
    assert whole[: len(context)] == context
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([whole])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    positions = range(len(context), len(whole))  # the logits at t − 1 predict token t
    scored = np.array([log_probs[t - 1, whole[t]].item() for t in positions])
    argmax = np.array([int(log_probs[t - 1].argmax()) == whole[t] for t in positions])
    return scored, argmax


@pytest.mark.parametrize("steps", [0, 8])
def test_qa_per_row_values_equal_a_manual_forward_pass(tiny_base: LoadedLM, steps: int) -> None:
    tokenizer = tiny_base.tokenizer
    lm = fine_tune(tiny_base.lm, tokenizer, qa_rows(), steps=steps) if steps else tiny_base.lm  # 8: half-learned
    rows = qa_rows()
    result = evaluate_qa(lm, tokenizer, rows, batch_size=3, max_new_tokens=2)
    for i, row in enumerate(rows):
        log_probs, argmax = _manual_answer_log_probs(lm, tokenizer, row.question, row.answer)
        assert_close(result.per_example["answer_probability"][i], float(np.exp(log_probs.mean())))
        assert_close(result.per_example["exact_memorization"][i], float(argmax.mean()))
        # Extraction strength: the shortest k with every token from k on the argmax; 1 − k/|a|.
        k = next(k for k in range(len(argmax) + 1) if argmax[k:].all())
        assert_close(result.per_example["extraction_strength"][i], 1 - k / len(argmax))
        assert_close(result.mia["loss"][i], float(-log_probs.mean()))
        if not row.perturbed_answers:
            continue
        paraphrased = np.exp(
            _manual_answer_log_probs(lm, tokenizer, row.question, row.paraphrased_answer or "")[0].mean()
        )
        wrong = [_manual_answer_log_probs(lm, tokenizer, row.question, a)[0].mean() for a in row.perturbed_answers]
        paper = float(np.mean(np.exp(wrong)) / paraphrased)  # TOFU Eq. 1: arithmetic mean of probabilities
        open_unlearning = float(np.exp(np.mean(wrong)) / (paraphrased + 1e-10))  # mean of log-probabilities
        assert_close(result.truth_ratios[i], paper)
        assert_close(result.per_example["truth_ratio"][i], max(0.0, 1 - paper))
        assert_close(result.per_example["truth_ratio_balance"][i], min(paper, 1 / paper))
        assert_close(result.per_example["truth_ratio_open_unlearning"][i], max(0.0, 1 - open_unlearning))
        assert_close(
            result.per_example["truth_ratio_balance_open_unlearning"][i], min(open_unlearning, 1 / open_unlearning)
        )


def test_every_qa_aggregate_is_the_mean_of_its_per_row_values(tiny_base: LoadedLM, qa_tuned: CausalLM) -> None:
    for lm in (tiny_base.lm, qa_tuned):
        result = evaluate_qa(lm, tiny_base.tokenizer, qa_rows(), batch_size=4, max_new_tokens=8)
        assert set(result.aggregates) == set(result.per_example) == QA_METRICS | TRUTH_RATIO_METRICS
        for name, values in result.per_example.items():
            defined = [v for v in values if v is not None]
            assert result.aggregates[name] == pytest.approx(sum(defined) / len(defined)), name
    # The check can tell a mean from a median: the base LM's per-row probabilities differ in both.
    probabilities = [v for v in result.per_example["answer_probability"] if v is not None]
    assert abs(statistics.mean(probabilities) - statistics.median(probabilities)) > 1e-3


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
    # Trained on the true (and paraphrased) answers, the LM prefers them to the perturbed ones, by both definitions.
    for suffix in ("", "_open_unlearning"):
        assert after.aggregates[f"truth_ratio{suffix}"] > before.aggregates[f"truth_ratio{suffix}"] + 0.2
        assert after.aggregates[f"truth_ratio_balance{suffix}"] < before.aggregates[f"truth_ratio_balance{suffix}"]


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


def test_privleak_is_about_minus_100_for_a_memorizing_lm_against_a_never_trained_reference(
    tiny_base: LoadedLM, qa_tuned: CausalLM
) -> None:
    tokenizer, members, nonmembers = tiny_base.tokenizer, qa_rows(), heldout_qa_rows()
    base = MembershipReference(
        mia_scores(tiny_base.lm, tokenizer, members, 4), mia_scores(tiny_base.lm, tokenizer, nonmembers, 4), True
    )
    tuned_members, tuned_nonmembers = (
        mia_scores(qa_tuned, tokenizer, members, 4),
        mia_scores(qa_tuned, tokenizer, nonmembers, 4),
    )
    metrics = membership_metrics(tuned_members, tuned_nonmembers, seed=0, reference=base)
    assert set(metrics) == {f"mia_auc_{a}" for a in MIA_ATTACKS} | {f"privleak_{a}" for a in MIA_ATTACKS}
    assert set(metrics) <= set(METRICS)
    # The tuned LM recognises every member by its loss (Lethe's AUC 1, MUSE's 0): MUSE's "never unlearned".
    base_auc = mia_metrics(base.members, base.nonmembers)["mia_auc_loss"]
    assert metrics["mia_auc_loss"].value == 1.0 and base_auc < 1.0
    assert metrics["privleak_loss"].value == pytest.approx(-100.0)
    assert metrics["privleak_zlib"].value < -80
    for name, estimate in metrics.items():
        assert estimate.n == len(members) + len(nonmembers)
        if name.startswith("mia_auc") or name == "privleak_loss":
            assert estimate.ci_low is not None and estimate.ci_high is not None, name
        # With 5 members and 4 non-members the base LM's AUC reaches 1 in some resamples (PrivLeak undefined
        # there): where more than 5% are, there is no interval.
        if estimate.ci_low is not None and estimate.ci_high is not None:
            assert estimate.ci_low <= estimate.value <= estimate.ci_high, name
    # A reference equal to the LM: 0, in every resample too.
    same = MembershipReference(tuned_members, tuned_nonmembers, never_learned=True)
    for attack in MIA_ATTACKS:
        leak = membership_metrics(tuned_members, tuned_nonmembers, seed=0, reference=same).get(f"privleak_{attack}")
        if leak is not None:  # omitted where the reference's MUSE AUC is 0
            assert (leak.value, leak.ci_low, leak.ci_high) == (0.0, 0.0, 0.0), attack
    # A reference that may have seen the rows (no fine-tune) names the comparison for what it is.
    seen = MembershipReference(base.members, base.nonmembers, never_learned=False)
    names = set(membership_metrics(tuned_members, tuned_nonmembers, seed=0, reference=seen))
    assert {f"privleak_vs_base_{a}" for a in MIA_ATTACKS} <= names <= set(METRICS)
    assert not any(name.startswith("privleak_") and "vs_base" not in name for name in names)
    assert set(membership_metrics(tuned_members, tuned_nonmembers, seed=0)) == {f"mia_auc_{a}" for a in MIA_ATTACKS}


def test_mia_scores_of_evaluate_qa_are_those_of_mia_scores(tiny_base: LoadedLM) -> None:
    rows = qa_rows()
    shared = evaluate_qa(tiny_base.lm, tiny_base.tokenizer, rows, 4, max_new_tokens=2).mia
    alone = mia_scores(tiny_base.lm, tiny_base.tokenizer, rows, 4)
    for attack in MIA_ATTACKS:
        # The same rows in other batches (evaluate_qa scores answers and alternatives together): equal up to fp32
        # rounding, which depends on the batch's padded width (1.4e-6 on a score of 0.92 with transformers 5.24).
        assert shared[attack] == pytest.approx(alone[attack], rel=1e-5, abs=1e-6)


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
