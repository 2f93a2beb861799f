"""Question-answer metrics (TOFU-style) of one row, from teacher-forced token scores or a greedy answer, and TOFU's
forget quality, which compares two LMs' distributions of one of them (the truth ratio) over a split.

Every per-row function here takes one row's `TokenScores` (or texts); `evaluate.evaluate_qa` maps them over a split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import ks_2samp

from worker.engine.metrics.rouge import rouge_l
from worker.engine.metrics.token_scores import TokenScores


def answer_probability(answer: TokenScores) -> float:
    """Length-normalized probability of the answer given the question: P(a|q)^(1/|a|) = exp(mean log p).

    TOFU's "Probability" on forget/retain sets and open-unlearning's `probability` (exp(−avg_loss) over the
    labelled tokens). Theirs includes the EOS that their chat template appends; ours scores the answer tokens only.
    """
    return float(np.exp(answer.log_probs.mean()))


def exact_memorization(answer: TokenScores) -> float:
    """Fraction of answer tokens that are the teacher-forced argmax (Tirumala et al. 2022; open-unlearning)."""
    return float(answer.correct.mean())


def extraction_strength(answer: TokenScores) -> float:
    """1 − k/|a| for the smallest k such that, teacher-forced on a[:k], every later token a[k:] is the argmax.

    Carlini et al. 2021's extraction, as open-unlearning's `extraction_strength`: 1 when the whole answer is
    the argmax, 0 when even its last token is not. open-unlearning's loop leaves k = |a| − 1 (so 1/|a|) when no
    suffix matches; we use k = |a| there, as the definition says.
    """
    wrong = np.flatnonzero(~answer.correct)
    k = int(wrong[-1]) + 1 if len(wrong) else 0  # the suffix after the last wrong token is all correct
    return 1.0 - k / len(answer)


def truth_ratio(paraphrased: TokenScores, perturbed: Sequence[TokenScores]) -> float:
    """R = mean over perturbed answers of P(â|q)^(1/|â|), divided by P(ã|q)^(1/|ã|) of the paraphrased answer.

    TOFU (Maini et al. 2024, Eq. 1): R < 1 when the LM prefers the (paraphrased) truth to wrong answers, R ≈ 1
    when it cannot tell them apart. The paper averages the perturbed answers' normalized *probabilities*
    (arithmetic mean); TOFU's code and open-unlearning average their log-probabilities instead (a geometric mean;
    TOFU issue #26 notes the mismatch): see `truth_ratio_open_unlearning`. This is the paper's.
    Computed in log space: log R = logmeanexp(mean log p(â)) − mean log p(ã).
    """
    if not perturbed:
        raise ValueError("the truth ratio needs at least one perturbed answer")
    wrong = np.array([scores.log_probs.mean() for scores in perturbed])
    log_wrong = np.logaddexp.reduce(wrong) - np.log(len(wrong))
    return float(np.exp(log_wrong - paraphrased.log_probs.mean()))


# open-unlearning's guard against a zero denominator (`wrong_prob / (correct_prob + 1e-10)`).
_OPEN_UNLEARNING_EPSILON = 1e-10


def truth_ratio_open_unlearning(paraphrased: TokenScores, perturbed: Sequence[TokenScores]) -> float:
    """R' = exp(−mean over perturbed answers of their mean NLL) / (exp(−mean NLL of the paraphrase) + 1e-10).

    open-unlearning `src/evals/metrics/memorization.py::truth_ratio` (its `true_better` and `closer_to_1_better`
    aggregators; TOFU's own code computes the same as exp(perturbed loss − paraphrased loss), inverted): the
    perturbed answers' normalized probabilities P(â|q)^(1/|â|) are combined by their *geometric* mean, where the
    paper's `truth_ratio` takes the arithmetic mean. By the AM–GM inequality R' ≤ R, equal when every perturbed
    answer is equally likely (and with one perturbed answer). Not reproduced: their scores include the chat
    template's end-of-turn tokens (Lethe scores the answer tokens only, as in `answer_probability`), and
    `closer_to_1_better`'s 1/(R' + 1e-10) (a relative change below 1e-10).
    """
    if not perturbed:
        raise ValueError("the truth ratio needs at least one perturbed answer")
    wrong = float(np.mean([scores.log_probs.mean() for scores in perturbed]))
    return float(np.exp(wrong) / (np.exp(paraphrased.log_probs.mean()) + _OPEN_UNLEARNING_EPSILON))


def truth_ratio_true_better(ratio: float) -> float:
    """max(0, 1 − R): TOFU's reported Truth Ratio on retain-type sets (open-unlearning's `true_better`).

    1 = the truth is far likelier than the wrong answers; 0 = it is not preferred at all. Higher = remembers.
    """
    return max(0.0, 1.0 - ratio)


def truth_ratio_balance(ratio: float) -> float:
    """min(R, 1/R): TOFU's code aggregate for the forget set (open-unlearning's `closer_to_1_better`).

    1 = true and wrong answers equally likely (nothing to tell them apart: forgotten); near 0 = one side is
    strongly preferred. Higher = forgets.
    """
    return min(ratio, 1.0 / ratio)


def rouge_l_recall(answer: str, generated: str) -> float:
    """ROUGE-L recall of the greedy answer against the true one (TOFU / open-unlearning `rougeL_recall`)."""
    return rouge_l(answer, generated).recall


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """TOFU's forget quality: the p-value of the two-sided two-sample Kolmogorov–Smirnov test between the forgotten
    LM's and a never-learned reference's per-row truth ratios R of the forget set (Maini et al. 2024;
    open-unlearning `ks_test`, scipy's `ks_2samp`).

    The test compares the raw ratios R (TOFU's code passes exp(perturbed loss − paraphrase loss) = 1/R: the same
    test, as KS depends on the values' order only), never the aggregated max(0, 1 − R) or min(R, 1/R): the first
    ties every R ≥ 1 at 0 and the second folds R and 1/R together, which changes the distributions compared.
    High (near 1) = no evidence that the forgotten LM differs from one that never learned the rows; low = it
    does. A p-value, not an effect size: with few rows it stays high whatever happened.
    """
    if not ratios or not reference_ratios:
        raise ValueError("forget quality needs truth ratios of both LMs")
    return float(ks_2samp(ratios, reference_ratios, alternative="two-sided").pvalue)
