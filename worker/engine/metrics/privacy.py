"""Membership-inference (MIA) scores of one example, the AUC of an attack, and MUSE's PrivLeak, with their intervals.

Every score follows open-unlearning's sign convention: *higher = looks less like training data* (a loss-like
number). Lethe's AUC is then the probability that a member scores lower than a non-member, ties counting half:
1 = every member is recognised, 0.5 = no better than chance. MUSE orients its AUC the other way (see `privleak`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from worker.engine.metrics.intervals import Estimate, stratified_bootstrap
from worker.engine.metrics.token_scores import TokenScores

# open-unlearning's mia_min_k / mia_min_k_plus_plus configs and MUSE's PrivLeak use k = 40%; Shi et al. (2024)
# found 20% best for detecting pretraining data. We follow the unlearning benchmarks.
MIN_K_FRACTION = 0.4

# A variance floor for min-k%++ where the LM is (nearly) certain of the next token (open-unlearning: 1e-6).
_MIN_VARIANCE = 1e-6


def loss_score(target: TokenScores) -> float:
    """Mean NLL of the target tokens (the LOSS attack, Yeom et al. 2018)."""
    return float(-target.log_probs.mean())


def zlib_score(target: TokenScores, text: str) -> float:
    """Mean NLL divided by the zlib-compressed length of the target text in bytes (Carlini et al. 2021).

    Carlini et al. rank by log-perplexity / zlib entropy; open-unlearning's ZLIBAttack computes the same
    avg_loss / len(zlib.compress(text.encode("utf-8"))) with the target text decoded from its tokens.
    """
    return loss_score(target) / len(zlib.compress(text.encode("utf-8")))


def _lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest max(1, floor(k · n)) values (open-unlearning's and Shi et al.'s count)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    count = max(1, int(len(values) * k))
    return float(np.sort(values)[:count].mean())


def min_k_score(target: TokenScores, k: float = MIN_K_FRACTION) -> float:
    """−(mean of the lowest k% token log-probs) (Min-K% Prob, Shi et al. 2024)."""
    return -_lowest_mean(target.log_probs, k)


def min_k_plus_plus_score(target: TokenScores, k: float = MIN_K_FRACTION) -> float:
    """−(mean of the lowest k% of (log p(y_t) − μ_t) / σ_t) (Min-K%++, Zhang et al. 2024).

    μ_t, σ_t are the mean and standard deviation of log p(z) under the LM's own next-token distribution, so a
    token scores high when it is likelier than what the LM expects at that position.
    """
    std = np.sqrt(np.maximum(target.std**2, _MIN_VARIANCE))
    return -_lowest_mean((target.log_probs - target.mean) / std, k)


def resampled_aucs(
    member_scores: Sequence[float],
    nonmember_scores: Sequence[float],
    member_indices: np.ndarray,
    nonmember_indices: np.ndarray,
) -> np.ndarray:
    """`mia_auc` of every row of (k, m) member and (k, n) non-member row indices into the scores (bootstrap draws).

    A draw counts every (member, non-member) pair it holds, with multiplicity: AUC = Σ_j below(j) / (m · n) over its
    non-members j, below(j) = its members scoring lower than j's score plus half those tied with it. With the
    members sorted by score, below(j) is a difference of cumulative counts of the draw's members at the sorted
    positions where j's score falls: O(k · (m + n)) in all, no sort per draw.
    """
    members, nonmembers = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    m, n = len(members), len(nonmembers)
    if m == 0 or n == 0:
        raise ValueError("the MIA AUC needs at least one member and one non-member")
    order = np.argsort(members, kind="stable")
    position = np.empty(m, dtype=np.int64)
    position[order] = np.arange(m)
    strictly_below = np.searchsorted(members[order], nonmembers, side="left")
    at_or_below = np.searchsorted(members[order], nonmembers, side="right")
    draws = len(member_indices)
    # counts[b, p + 1] = how often draw b holds the member at sorted position p; cumulative[b, q] = its members
    # among the q lowest.
    flat = (np.arange(draws)[:, None] * (m + 1) + position[member_indices] + 1).ravel()
    cumulative = np.bincount(flat, minlength=draws * (m + 1)).reshape(draws, m + 1).cumsum(axis=1)
    lower, tied = cumulative[:, strictly_below], cumulative[:, at_or_below] - cumulative[:, strictly_below]
    below = lower + 0.5 * tied  # (draws, n): per non-member of the original rows
    return np.take_along_axis(below, nonmember_indices, axis=1).sum(axis=1) / (m * n)


def mia_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of telling members from non-members by score: P(member score < non-member score), ties half.

    1 = every member looks more like training data than every non-member; 0.5 = indistinguishable.
    (open-unlearning: labels 0 for forget, 1 for holdout, scores as they are.)
    """
    every_member, every_nonmember = np.arange(len(member_scores))[None], np.arange(len(nonmember_scores))[None]
    return float(resampled_aucs(member_scores, nonmember_scores, every_member, every_nonmember)[0])


def mia_auc_estimate(member_scores: Sequence[float], nonmember_scores: Sequence[float], seed: int) -> Estimate:
    """`mia_auc` with its stratified bootstrap interval: members and non-members resampled apart, so every resample
    has as many of each as the data (the two groups are sampled apart: a forget set and a heldout set)."""

    def auc(member_indices: np.ndarray, nonmember_indices: np.ndarray) -> np.ndarray:
        return resampled_aucs(member_scores, nonmember_scores, member_indices, nonmember_indices)

    return stratified_bootstrap([len(member_scores), len(nonmember_scores)], auc, seed)


def privleak(auc_model: np.ndarray | float, auc_reference: np.ndarray | float) -> np.ndarray:
    """PrivLeak = (AUC_model − AUC_reference) / AUC_reference × 100 on MUSE's AUC, from Lethe's AUCs (Shi et al. 2024).

    MUSE's AUC (`metrics/privleak.py`: roc_curve with the forget set labelled 0, the holdout 1, score −loss) is
    P(a member looks *less* like training data than a non-member) = 1 − Lethe's AUC; open-unlearning's `privleak`
    turns its own AUC around the same way (1 − x). With a = 1 − Lethe's AUC:

        PrivLeak = (a_model − a_reference) / a_reference × 100 = (auc_reference − auc_model) / (1 − auc_reference) × 100

    A reference that never saw the forget set has a ≈ 0.5. A model that never unlearned recognises its members
    (Lethe's AUC → 1, a → 0): PrivLeak → −100. 0 = leaks as much as the reference. Over-unlearning makes members
    look *less* like training data than unseen rows (a → 1): PrivLeak → +100, a leak of its own, not a success.
    NaN where the reference's a is 0 (it recognises every member: nothing to compare with).
    """
    muse_model, muse_reference = 1.0 - np.asarray(auc_model), 1.0 - np.asarray(auc_reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(muse_reference > 0, (muse_model - muse_reference) / muse_reference * 100.0, np.nan)


def privleak_estimate(
    members: Sequence[float],
    nonmembers: Sequence[float],
    reference_members: Sequence[float],
    reference_nonmembers: Sequence[float],
    seed: int,
) -> Estimate:
    """`privleak` of the model's MIA scores against the reference's scores of the same rows, with a paired
    stratified bootstrap interval: every resample draws members and non-members apart, and the same rows for both
    LMs (the rows' difficulty is shared by both AUCs; resampling them jointly keeps that)."""

    def statistic(member_indices: np.ndarray, nonmember_indices: np.ndarray) -> np.ndarray:
        model = resampled_aucs(members, nonmembers, member_indices, nonmember_indices)
        reference = resampled_aucs(reference_members, reference_nonmembers, member_indices, nonmember_indices)
        return privleak(model, reference)

    return stratified_bootstrap([len(members), len(nonmembers)], statistic, seed, paired=True)
