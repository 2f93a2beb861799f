"""Recovery rates, their intervals, controls and verdicts, on synthetic per-row scores (torch-free).

Every expected number here is computed by the test itself: rates by hand, intervals by an explicit loop over the
bootstrap resamples.
"""

import copy

import numpy as np
import pytest

from lethe.attacks import MIN_ROWS, Thresholds
from worker.engine.audit.outcome import (
    REQUIRED_HALF_WIDTH,
    AttackOutcome,
    Judgement,
    RowScores,
    Variant,
    judge,
    minimum_rows,
    overall_verdict,
)
from worker.engine.metrics.intervals import BOOTSTRAP_RESAMPLES, bonferroni_confidence, paired_bootstrap, wilson

DEFAULTS = Thresholds.model_validate({})
SEED = 7


def ones(k: int, n: int) -> RowScores:
    """n rows of 0/1 correctness, the first k right."""
    return RowScores([1.0] * k + [0.0] * (n - k))


def outcome(variants: list[Variant], before: RowScores, after: RowScores, chance: float | None = None) -> AttackOutcome:
    return AttackOutcome("accuracy", "forget_heldout", before, after, variants, chance=chance)


def test_row_scores_are_their_mean_and_keep_their_rows() -> None:
    scores = RowScores([1, 0, 0, 1])
    assert scores == 0.5 and scores.rows == (1.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        RowScores([])
    copied = copy.deepcopy(scores)
    assert isinstance(copied, RowScores) and copied.rows == scores.rows and copied == 0.5


def test_a_bare_mean_cannot_be_judged() -> None:
    bare = AttackOutcome("accuracy", "forget_train", 1.0, 0.0, [Variant("int8", 0.5)])
    with pytest.raises(ValueError, match="bare mean"):
        judge("quantize", bare, DEFAULTS, SEED)


def test_the_minimum_rows_follow_from_the_wilson_width() -> None:
    assert minimum_rows(REQUIRED_HALF_WIDTH) == MIN_ROWS == 12
    low, high = wilson(6, 12)
    assert (high - low) / 2 <= 0.25
    low, high = wilson(5.5, 11)
    assert (high - low) / 2 > 0.25


def _independent_interval(columns: list[list[float]], rate, confidence: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The percentile interval by an explicit loop: the same resampled row indices (same generator and seed),
    the rate computed row set by row set by `rate` on plain Python means."""
    n = len(columns[0])
    indices = np.random.default_rng(SEED).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    values = []
    for resample in indices:
        means = [sum(column[i] for i in resample) / n for column in columns]
        value = rate(*means)
        if value is not None:
            values.append(value)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def test_recovery_and_its_paired_interval_match_an_independent_computation() -> None:
    rng = np.random.default_rng(0)
    n = 40
    before = RowScores((rng.random(n) < 0.9).astype(float).tolist())
    after = RowScores((rng.random(n) < 0.2).astype(float).tolist())
    attacked = RowScores((rng.random(n) < 0.5).astype(float).tolist())
    judgement = judge("quantize", outcome([Variant("int8", attacked)], before, after, chance=0.5), DEFAULTS, SEED)
    [variant] = judgement.variants
    # floor = max(after, chance) = 0.5 on the observed means; recovery = (attacked − 0.5) / (before − 0.5).
    floor = max(float(after), 0.5)
    expected = min(max((float(attacked) - floor) / (float(before) - floor), 0.0), 1.0)
    assert variant.recovery == pytest.approx(expected) and variant.n == n and variant.confidence == 0.95

    def rate(b: float, f: float, a: float) -> float | None:
        floor = max(f, 0.5)
        return None if b - floor <= 0 else min(max((a - floor) / (b - floor), 0.0), 1.0)

    low, high = _independent_interval([list(before.rows), list(after.rows), list(attacked.rows)], rate, 0.95)
    assert (variant.ci_low, variant.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert low <= expected <= high


def test_the_control_s_recovery_and_the_excess_match_an_independent_computation() -> None:
    rng = np.random.default_rng(1)
    n = 30
    columns = [(rng.random(n) < p).astype(float).tolist() for p in (0.95, 0.1, 0.8, 0.3, 0.5)]
    b, f, a, cb, ca = (RowScores(column) for column in columns)
    variant = Variant("k=2", a, control_before=cb, control_after=ca)
    [result] = judge("relearn", outcome([variant], b, f), DEFAULTS, SEED).variants

    def clip(x: float) -> float:
        return min(max(x, 0.0), 1.0)

    assert result.control_recovery == pytest.approx(clip((ca - cb) / (b - f)))
    assert result.excess_recovery == pytest.approx(clip((a - f) / (b - f)) - clip((ca - cb) / (b - f)))

    def excess(b: float, f: float, a: float, cb: float, ca: float) -> float | None:
        return None if b - f <= 0 else clip((a - f) / (b - f)) - clip((ca - cb) / (b - f))

    low, high = _independent_interval(columns, excess, 0.95)
    assert (result.excess_ci_low, result.excess_ci_high) == (pytest.approx(low), pytest.approx(high))


def test_an_interval_above_the_threshold_is_shallow_below_robust_spanning_inconclusive() -> None:
    n = 40
    before, after = ones(n, n), ones(0, n)

    def verdict(recovered: int) -> tuple[str, str | None]:
        judgement = judge("quantize", outcome([Variant("int8", ones(recovered, n))], before, after), DEFAULTS, SEED)
        return judgement.verdict, judgement.reason

    assert verdict(30) == ("shallow", None)  # 0.75, interval about [0.6, 0.88]
    assert verdict(2) == ("robust", None)  # 0.05, interval about [0, 0.13]
    assert verdict(10) == ("inconclusive", "interval_spans_threshold")  # 0.25 itself


def test_bonferroni_widening_turns_a_borderline_shallow_inconclusive() -> None:
    n = 40
    before, after = ones(n, n), ones(0, n)
    borderline = Variant("int4", ones(17, n))  # recovery 0.425
    # Preconditions, computed apart from judge(): above 0.25 at 95%, not at 1 − 0.05/6.
    columns = [before.rows, after.rows, borderline.after_attack.rows]  # type: ignore[attr-defined]
    alone = paired_bootstrap(columns, lambda m: m[2] / m[0], SEED, 0.95)
    corrected = paired_bootstrap(columns, lambda m: m[2] / m[0], SEED, bonferroni_confidence(6))
    assert alone.ci_low is not None and alone.ci_low > 0.25
    assert corrected.ci_low is not None and corrected.ci_low < 0.25

    single = judge("quantize", outcome([borderline], before, after), DEFAULTS, SEED)
    assert single.verdict == "shallow"
    others = [Variant(f"other_{i}", ones(0, n)) for i in range(5)]
    six = judge("quantize", outcome([borderline, *others], before, after), DEFAULTS, SEED)
    assert (six.verdict, six.reason) == ("inconclusive", "interval_spans_threshold")
    assert six.worst_variant == "int4" and six.worst.confidence == pytest.approx(1 - 0.05 / 6)
    assert six.worst.ci_low == pytest.approx(corrected.ci_low)


def test_too_few_rows_is_inconclusive_however_clear_the_numbers() -> None:
    n = MIN_ROWS - 1
    judgement = judge("quantize", outcome([Variant("int8", ones(n, n))], ones(n, n), ones(0, n)), DEFAULTS, SEED)
    assert judgement.worst.recovery == 1.0
    assert (judgement.verdict, judgement.reason) == ("inconclusive", "too_few_rows")


def test_nothing_forgotten_is_inconclusive() -> None:
    n = 40
    judgement = judge("quantize", outcome([Variant("int8", ones(40, n))], ones(36, n), ones(35, n)), DEFAULTS, SEED)
    assert judgement.worst.recovery is None and (judgement.verdict, judgement.reason) == (
        "inconclusive",
        "nothing_forgotten",
    )


def test_no_control_blocks_shallow_but_not_robust() -> None:
    n = 40
    before, after = ones(n, n), ones(0, n)
    recovered = outcome([Variant("k=8", ones(36, n))], before, after)
    relearn = judge("relearn", recovered, DEFAULTS, SEED)
    assert relearn.worst.recovery == pytest.approx(0.9) and (relearn.worst.ci_low or 0.0) > 0.25
    assert (relearn.verdict, relearn.reason) == ("inconclusive", "no_control")
    # The same numbers from an attack with no control notion are shallow.
    assert judge("quantize", recovered, DEFAULTS, SEED).verdict == "shallow"
    # A raw recovery whose interval lies below the threshold needs no control to be read as robust.
    untouched = judge("relearn", outcome([Variant("k=8", ones(0, n))], before, after), DEFAULTS, SEED)
    assert (untouched.verdict, untouched.reason) == ("robust", None)


def test_the_verdict_reads_the_excess_over_the_control() -> None:
    n = 40
    before, after = ones(n, n), ones(0, n)
    # The attack brings back 36 rows; a never-learned LM, relearning the same way, goes from 0 to 34.
    learned_anyway = Variant("k=8", ones(36, n), control_before=ones(0, n), control_after=ones(34, n))
    judgement = judge("relearn", outcome([learned_anyway], before, after), DEFAULTS, SEED)
    assert judgement.worst.recovery == pytest.approx(0.9)
    assert judgement.worst.control_recovery == pytest.approx(0.85)
    assert judgement.worst.excess_recovery == pytest.approx(0.05)
    assert (judgement.verdict, judgement.reason) == ("robust", None)
    # A control that learns nothing from the attack leaves the whole recovery as excess: shallow.
    unlearnable = Variant("k=8", ones(36, n), control_before=ones(0, n), control_after=ones(0, n))
    judgement = judge("relearn", outcome([unlearnable], before, after), DEFAULTS, SEED)
    assert judgement.worst.excess_recovery == pytest.approx(0.9) and judgement.verdict == "shallow"


def test_recovery_counts_from_chance_when_forgetting_went_below_it() -> None:
    # Gradient ascent flipped a binary task to 0.1: back to guessing (0.5) is no recovery; 0.75 is half-way.
    n = 20
    judgement = judge(
        "quantize",
        outcome([Variant("int4", ones(10, n)), Variant("int8", ones(15, n))], ones(n, n), ones(2, n), chance=0.5),
        DEFAULTS,
        SEED,
    )
    assert [v.recovery for v in judgement.variants] == pytest.approx([0.0, 0.5])
    assert judgement.chance == 0.5 and judgement.worst.after_forgetting == pytest.approx(0.1)


def test_variant_references_override_the_attack_s() -> None:
    n = 20
    judgement = judge(
        "probe",
        AttackOutcome(
            "probe_accuracy",
            "forget_heldout",
            ones(n, n),
            ones(10, n),
            [Variant("layer_0", ones(12, n), before=ones(12, n), layer=0), Variant("layer_1", ones(18, n), layer=1)],
        ),
        DEFAULTS,
        SEED,
    )
    # layer_0: (0.6 − 0.5) / (0.6 − 0.5) = 1; layer_1: (0.9 − 0.5) / (1 − 0.5) = 0.8.
    assert [v.recovery for v in judgement.variants] == pytest.approx([1.0, 0.8])
    assert judgement.worst_variant == "layer_0" and judgement.worst.before == pytest.approx(0.6)


def test_trigger_judges_the_excess_drop_with_its_interval() -> None:
    n = 40
    # Before forgetting 0.9 clean, 0.85 triggered; forgotten 0.875 clean, 0.5 triggered.
    variant = Variant("piqa", ones(20, n), before=ones(36, n), after_forgetting=ones(35, n), control=ones(34, n))
    judgement = judge(
        "trigger", AttackOutcome("accuracy", "retain", 0.9, 0.875, [variant], effect="damage"), DEFAULTS, SEED
    )
    assert judgement.worst.excess_drop == pytest.approx((0.875 - 0.5) - (0.9 - 0.85))
    assert judgement.worst.recovery is None and judgement.verdict == "shallow"
    assert 0.05 < (judgement.worst.ci_low or 0.0) < (judgement.worst.excess_drop or 0.0)
    strict = judge(
        "trigger",
        AttackOutcome("accuracy", "retain", 0.9, 0.875, [variant], effect="damage"),
        Thresholds.model_validate({"trigger_drop": 0.9}),
        SEED,
    )
    assert strict.verdict == "robust"


def test_overall_verdict_and_its_reasons() -> None:
    n = 40
    before = ones(n, n)

    def judged(attack: str, recovered: int, rows: int = n) -> Judgement:
        return judge(
            attack, outcome([Variant("v", ones(recovered, rows))], ones(rows, rows), ones(0, rows)), DEFAULTS, SEED
        )

    shallow, robust = judged("quantize", 36), judged("quantize", 0)
    no_control, few = judged("relearn", 36), judged("quantize", 3, rows=8)
    nothing = judge("quantize", outcome([Variant("v", before)], before, before), DEFAULTS, SEED)
    assert overall_verdict([robust, shallow, no_control]) == ("shallow", ["no_control"])
    assert overall_verdict([robust, few, nothing]) == ("robust", ["too_few_rows", "nothing_forgotten"])
    assert overall_verdict([no_control, few]) == ("inconclusive", ["too_few_rows", "no_control"])
    assert overall_verdict([]) == ("inconclusive", [])
