import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import auc as area_under
from sklearn.metrics import roc_auc_score, roc_curve

from tests.engine.metrics.conftest import scores_of
from worker.engine.metrics.privacy import (
    loss_score,
    mia_auc,
    mia_auc_estimate,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    privleak_estimate,
    resampled_aucs,
    zlib_score,
)


def test_loss_is_the_mean_nll() -> None:
    assert loss_score(scores_of([0.5, 0.125])) == pytest.approx(2 * 0.6931471805599453)


def test_zlib_divides_the_loss_by_the_compressed_length() -> None:
    # zlib.compress(b"hello world") = 2 header + 13 deflate (fixed Huffman, no repeats) + 4 checksum = 19 bytes.
    target = scores_of([0.25])  # loss ln 4
    assert zlib_score(target, "hello world") == pytest.approx(1.3862943611198906 / 19)


def test_min_k_averages_the_lowest_fraction_of_log_probs() -> None:
    target = scores_of([math.exp(-v) for v in (1, 2, 3, 4, 5)])  # log p = −1 … −5
    assert min_k_score(target, k=0.4) == pytest.approx(4.5)  # floor(5 · 0.4) = 2 lowest: −5, −4
    assert min_k_score(target, k=0.2) == pytest.approx(5.0)
    assert min_k_score(target, k=0.1) == pytest.approx(5.0)  # at least one token
    assert min_k_score(target, k=1.0) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        min_k_score(target, k=0.0)


def test_min_k_plus_plus_standardizes_by_the_vocabulary_distribution() -> None:
    # log p = −1, −2; μ = −1.5, −1; σ = 0.5, 2 → z = 1, −0.5
    target = scores_of([math.exp(-1), math.exp(-2)], mean=[-1.5, -1.0], std=[0.5, 2.0])
    assert min_k_plus_plus_score(target, k=0.5) == pytest.approx(0.5)
    assert min_k_plus_plus_score(target, k=1.0) == pytest.approx(-0.25)
    # A certain position (σ = 0) uses the variance floor 1e-6 instead of dividing by 0.
    certain = scores_of([math.exp(-1)], mean=[-1.001], std=[0.0])
    assert min_k_plus_plus_score(certain, k=1.0) == pytest.approx(-0.001 / 1e-3)


def test_mia_auc_is_the_probability_a_member_scores_lower() -> None:
    assert mia_auc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert mia_auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    # (1,3) (1,0.5) (2,3) (2,0.5): 2 of 4 pairs
    assert mia_auc([1.0, 2.0], [3.0, 0.5]) == pytest.approx(0.5)
    # (1,3) (1,4) (3,3) tie = ½ (3,4): 3.5 of 4
    assert mia_auc([1.0, 3.0], [3.0, 4.0]) == pytest.approx(0.875)
    with pytest.raises(ValueError):
        mia_auc([], [1.0])


def test_resampled_aucs_equal_sklearn_on_every_draw_with_ties() -> None:
    rng = np.random.default_rng(0)
    members = rng.integers(0, 5, size=7).astype(float)  # few distinct values: many ties
    nonmembers = rng.integers(0, 5, size=4).astype(float)
    member_draws, nonmember_draws = rng.integers(0, 7, size=(6, 7)), rng.integers(0, 4, size=(6, 4))
    expected = [
        roc_auc_score([0] * 7 + [1] * 4, [*members[i], *nonmembers[j]])
        for i, j in zip(member_draws, nonmember_draws, strict=True)
    ]
    aucs = resampled_aucs(members.tolist(), nonmembers.tolist(), member_draws, nonmember_draws)
    assert aucs == pytest.approx(expected)
    assert mia_auc(list(members), list(nonmembers)) == pytest.approx(
        roc_auc_score([0] * 7 + [1] * 4, [*members, *nonmembers])
    )


def _muse_auc(forget_losses: list[float], holdout_losses: list[float]) -> float:
    """MUSE's own AUC (muse_bench metrics/privleak.py::sweep): forget labelled 0, holdout 1, scored by −loss."""
    y = np.array([0] * len(forget_losses) + [1] * len(holdout_losses))
    fpr, tpr, _ = roc_curve(y, -np.array(forget_losses + holdout_losses))
    return float(area_under(fpr, tpr))


def test_privleak_is_muses_relative_auc_change_with_muses_orientation() -> None:
    # Lethe's AUC is 1 − MUSE's: a model that recognises every member (Lethe 1.0, MUSE 0.0) against a reference at
    # chance (0.5) is MUSE's "never unlearned": −100%; an equal AUC 0; members looking unseen-er than unseen rows
    # (Lethe 0.0, MUSE 1.0) is over-unlearning: +100%.
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert privleak(0.5, 0.5) == pytest.approx(0.0)
    assert privleak(0.0, 0.5) == pytest.approx(100.0)
    assert privleak(0.8, 0.6) == pytest.approx((0.2 - 0.4) / 0.4 * 100)  # −50
    assert np.isnan(privleak(0.7, 1.0))  # a reference recognising every member: no MUSE denominator
    # Against MUSE's own computation on scores: (AUC_unlearn − AUC_retrain) / AUC_retrain × 100.
    rng = np.random.default_rng(1)
    model_forget, model_holdout = list(rng.normal(0, 1, 12)), list(rng.normal(0.7, 1, 9))
    ref_forget, ref_holdout = list(rng.normal(0, 1, 12)), list(rng.normal(0.2, 1, 9))
    muse_model, muse_ref = _muse_auc(model_forget, model_holdout), _muse_auc(ref_forget, ref_holdout)
    ours = privleak(mia_auc(model_forget, model_holdout), mia_auc(ref_forget, ref_holdout))
    assert ours == pytest.approx((muse_model - muse_ref) / muse_ref * 100)


def test_the_mia_auc_interval_covers_the_true_auc() -> None:
    # Members ~ N(0, 1), non-members ~ N(d, 1) as loss-like scores: true AUC = P(member < non-member) = Φ(d / √2).
    d, truth, rng = 0.8, float(norm.cdf(0.8 / math.sqrt(2))), np.random.default_rng(2)
    covered = 0
    for trial in range(100):
        members, nonmembers = list(rng.normal(0, 1, 30)), list(rng.normal(d, 1, 20))
        estimate = mia_auc_estimate(members, nonmembers, seed=trial)
        assert estimate.value == pytest.approx(mia_auc(members, nonmembers)) and estimate.n == 50
        assert estimate.ci_low is not None and estimate.ci_high is not None
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
        covered += estimate.ci_low <= truth <= estimate.ci_high
    assert covered >= 88  # 95% nominal; a percentile bootstrap of 50 rows covers a little less


def test_the_mia_auc_bootstrap_is_stratified_and_seeded() -> None:
    # 2 members among 40 non-members: a bootstrap over the pooled rows would draw no member in about
    # (40/42)^42 ≈ 13% of resamples (AUC undefined, no interval); resampling each group apart always has both.
    members, nonmembers = [0.1, 0.2], [float(v) for v in np.linspace(0.15, 3, 40)]
    estimate = mia_auc_estimate(members, nonmembers, seed=0)
    assert estimate.ci_low is not None and estimate.ci_high is not None and estimate.method == "bootstrap"
    single = mia_auc_estimate([0.1], nonmembers, seed=0)
    assert (single.ci_low, single.ci_high, single.n) == (None, None, 41)
    # The job's seed fixes the resamples: the same seed gives the same interval, another seed another.
    rng = np.random.default_rng(4)
    members, nonmembers = list(rng.normal(0, 1, 15)), list(rng.normal(0.5, 1, 15))
    assert mia_auc_estimate(members, nonmembers, seed=0) == mia_auc_estimate(members, nonmembers, seed=0)
    assert mia_auc_estimate(members, nonmembers, seed=0) != mia_auc_estimate(members, nonmembers, seed=1)


def test_privleak_interval_is_paired_over_the_same_rows() -> None:
    rng = np.random.default_rng(3)
    members, nonmembers = list(rng.normal(0, 1, 25)), list(rng.normal(0.5, 1, 25))
    # The reference is the model itself: every resample's two AUCs are equal, so PrivLeak is 0 in every one; an
    # interval from independent resamples of the two LMs would be wide.
    same = privleak_estimate(members, nonmembers, members, nonmembers, seed=0)
    assert (same.value, same.ci_low, same.ci_high, same.n, same.method) == (0.0, 0.0, 0.0, 50, "paired_bootstrap")
    # A member-memorizing model (members' loss far below) against a reference at chance: about −100%.
    memorized = [m - 5 for m in members]
    reference_members = list(rng.normal(0.25, 1, 25))
    leak = privleak_estimate(memorized, nonmembers, reference_members, nonmembers, seed=0)
    expected = privleak(mia_auc(memorized, nonmembers), mia_auc(reference_members, nonmembers))
    assert leak.value == pytest.approx(float(expected)) and leak.value < -90
    assert leak.ci_low is not None and leak.ci_high is not None
    assert leak.ci_low <= leak.value <= leak.ci_high < 0
