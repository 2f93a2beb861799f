import math

import pytest
from scipy.stats import ks_2samp

from tests.engine.metrics.conftest import scores_of
from worker.engine.metrics.qa import (
    answer_probability,
    exact_memorization,
    extraction_strength,
    forget_quality,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_balance,
    truth_ratio_open_unlearning,
    truth_ratio_true_better,
)


def test_answer_probability_is_the_geometric_mean_of_token_probabilities() -> None:
    # (0.5 · 0.125)^(1/2) = 0.25
    assert answer_probability(scores_of([0.5, 0.125])) == pytest.approx(0.25)


def test_exact_memorization_is_the_fraction_of_argmax_tokens() -> None:
    assert exact_memorization(scores_of([0.5] * 4, correct=[True, False, True, True])) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        ([True, True, True, True], 1.0),  # k = 0
        ([False, True, True, True, True], 0.8),  # k = 1: a[1:] all argmax
        ([True, False, True, True], 0.5),  # k = 2: the wrong token at 1 must be given
        ([True, True, True, False], 0.0),  # k = |a|: even the last token is not the argmax
        ([False], 0.0),
    ],
)
def test_extraction_strength(correct: list[bool], expected: float) -> None:
    assert extraction_strength(scores_of([0.5] * len(correct), correct=correct)) == pytest.approx(expected)


def test_truth_ratio_is_the_arithmetic_mean_of_normalized_wrong_probabilities_over_the_true_one() -> None:
    paraphrased = scores_of([0.5, 0.5])  # normalized 0.5
    perturbed = [scores_of([0.25]), scores_of([0.04, 0.25])]  # normalized 0.25 and sqrt(0.01) = 0.1
    ratio = truth_ratio(paraphrased, perturbed)
    assert ratio == pytest.approx((0.25 + 0.1) / 2 / 0.5)  # 0.35
    assert truth_ratio_true_better(ratio) == pytest.approx(0.65)
    assert truth_ratio_balance(ratio) == pytest.approx(0.35)
    # Preferring a wrong answer: R = 2, no credit for the truth, balance 1/2.
    assert truth_ratio_true_better(2.0) == 0.0 and truth_ratio_balance(2.0) == 0.5
    with pytest.raises(ValueError):
        truth_ratio(paraphrased, [])


def test_open_unlearnings_truth_ratio_takes_the_geometric_mean_of_the_wrong_answers() -> None:
    paraphrased = scores_of([0.5, 0.5])  # normalized 0.5
    perturbed = [scores_of([0.25]), scores_of([0.04, 0.25])]  # normalized 0.25 and 0.1
    # exp(mean(log 0.25, log 0.1)) = sqrt(0.025) = 0.158114; / (0.5 + 1e-10) = 0.316228, below the paper's 0.35.
    assert truth_ratio_open_unlearning(paraphrased, perturbed) == pytest.approx(math.sqrt(0.025) / 0.5, rel=1e-9)
    assert truth_ratio_open_unlearning(paraphrased, perturbed) < truth_ratio(paraphrased, perturbed)
    # One perturbed answer: the means agree (up to open-unlearning's 1e-10 in the denominator).
    assert truth_ratio_open_unlearning(paraphrased, perturbed[:1]) == pytest.approx(0.5, rel=1e-9)
    assert truth_ratio(paraphrased, perturbed[:1]) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        truth_ratio_open_unlearning(paraphrased, [])


def test_forget_quality_is_the_two_sided_ks_p_value_of_the_raw_ratios() -> None:
    # Fully separated samples of 5 and 5: D = 1, exact two-sided p = 2 / C(10, 5) = 2/252.
    low, high = [0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 1.0]
    assert forget_quality(low, high) == pytest.approx(2 / 252)
    assert forget_quality(low, low) == 1.0
    forgotten, reference = [0.3, 0.5, 0.9, 1.2, 0.7, 0.4], [0.8, 1.1, 0.95, 1.3, 0.6, 1.05, 0.99]
    assert forget_quality(forgotten, reference) == pytest.approx(ks_2samp(forgotten, reference).pvalue)
    # The raw R, not an aggregate: every R ≥ 1 clips to max(0, 1 − R) = 0, which would make these two samples
    # identical (p = 1); their ratios are fully separated: D = 1, p = 2 / C(6, 3) = 0.1.
    above, further = [1.5, 2.0, 3.0], [1.1, 1.2, 1.3]
    assert forget_quality(above, further) == pytest.approx(0.1)
    clipped = [truth_ratio_true_better(r) for r in above], [truth_ratio_true_better(r) for r in further]
    assert ks_2samp(*clipped).pvalue == 1.0
    with pytest.raises(ValueError):
        forget_quality([], high)


def test_truth_ratio_does_not_underflow_for_long_unlikely_answers() -> None:
    # 400 tokens of p = 1e-3 would underflow as a product; normalized probabilities stay finite.
    ratio = truth_ratio(scores_of([1e-3] * 400), [scores_of([1e-4] * 400)])
    assert math.isclose(ratio, 0.1)


def test_rouge_l_recall_of_the_answer() -> None:
    # reference tokens: the cat sat on the mat (6); LCS with "the cat on a mat" = the cat on mat (4)
    assert rouge_l_recall("The cat sat on the mat.", "the cat on a mat") == pytest.approx(4 / 6)
