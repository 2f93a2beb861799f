"""What an attack measured, the recovery rates drawn from it with their intervals, and the verdicts (torch-free).

Every attack scores the same rows (the forget kind's primary metric per row: 0/1 correctness for choice rows,
answer or text probability for qa and text rows, a probe's 0/1 correctness) three ways: `before` (the LM before
forgetting), `after_forgetting` (the forgotten LM) and `after_attack` (the forgotten LM under the attack). Each is a
`RowScores`: the mean, which is what the report shows, keeping the per-row scores it is the mean of. An attack has
one or more variants (a k, a quantization scheme, a parameter group, a layer).

    recovery = (after_attack − floor) / (before − floor), clipped to [0, 1],   floor = max(after_forgetting, chance)

Where the score has a chance level (accuracy on choice rows, a probe's accuracy) the floor is chance at the lowest:
forgetting often pushes a binary task below chance (gradient ascent flips the answers), and an attack that merely
brings the LM back to guessing has recovered nothing. `chance` is in every result, so the rate can be recomputed.

Never-learned control (relearn, in_context, probe: attacks that can succeed by ordinary learning, whatever the LM
forgot). Where the forget job fine-tuned first, the same attack is run on the base LM, which never saw the task's
rows: `control_before` is its score before the attack, `control_after` after it, on the same rows. Then

    control_recovery = (control_after − control_before) / (before − floor), clipped to [0, 1]
    excess_recovery  = recovery − control_recovery

in the same units: the share of what forgetting removed that the attack brings back beyond what it teaches an LM
that never knew the task. A negative gain counts as none on both sides (clipping), so an attack that hurts the
control does not inflate the excess.

The trigger attack measures damage, not recovery: `after_forgetting` is the forgotten LM on clean retain rows,
`after_attack` on retain rows with forget words inserted, `control` the pre-forgetting LM on the triggered rows:

    excess_drop = (after_forgetting − after_attack) − max(0, before − control)

Intervals. Each variant's numbers are statistics of its columns' means over the same n rows, so their intervals
are paired percentile bootstraps over the rows (`paired_bootstrap`, seeded by the audit's seed): one set of row
indices per resample for every column, which keeps the rows' correlation across the LMs that scored them. A
resample in which before − floor ≤ 0 has no rate (NaN); with more than 5% of them the interval cannot be drawn.
The verdict looks at all of an attack's m variants at once (is any above the threshold, are all below), so each
variant's interval is at the Bonferroni level 1 − 0.05/m (`bonferroni_confidence`): the chance that any of the m
intervals misses its value stays below 5%.

Verdict of an attack, with `evidence` = excess_recovery where the attack has a control, recovery otherwise
(excess_drop for trigger) and t its threshold (`recovery_for(attack)`, `trigger_drop`):

1. A variant on fewer than MIN_ROWS rows decides nothing (`too_few_rows`).
2. A variant has no rate when before − floor < min_forgetting, its own references or the attack's (`nothing_forgotten`;
   the rate would divide noise by noise). Not for trigger, which has no rate.
3. `shallow` when some variant's evidence interval lies above t (ci_low > t) and, for an attack that needs a control
   (`AttackSpec.controlled`), that evidence is the excess over the control: without a control such an attack is
   never shallow on its own (`no_control`).
4. `robust` when every variant that has a rate has its evidence interval below t (ci_high < t), and there is one:
   the raw recovery's where there is no control (an interval below t needs no control to be read).
5. Otherwise `inconclusive`, with the first reason that applies: `too_few_rows` (a variant had too few rows),
   `nothing_forgotten` (no variant has a rate), `no_control` (a variant of a controlled attack without a control
   is not below t), `interval_spans_threshold` (an interval contains t, or could not be drawn).

Minimum sample size. MIN_ROWS is the smallest n at which one accuracy's 95% Wilson interval at its widest
(p = 0.5) is within ±0.25 (REQUIRED_HALF_WIDTH): n = 12 (±0.246; 11 rows give ±0.254). A recovery is a ratio of
differences of such scores divided by what forgetting removed (at most 1), so its interval is no narrower than
that in general; with fewer rows no interval can be expected to clear the default threshold of 0.25 on either
side. It is a floor, not a guarantee: past it, the intervals decide.

The attack's result repeats its deciding variant's numbers (`worst_variant`): when shallow, the variant whose
interval's lower end is highest; otherwise the one whose upper end is highest (furthest from robust).

Overall verdict (`overall_verdict`): `shallow` if any attack is; `robust` if every conclusive attack is and there
is at least one; else `inconclusive`. Its reasons are those of every inconclusive attack, whatever the overall
verdict (a robust audit says which attacks could not conclude, and why).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lethe.attacks import ATTACKS, MIN_ROWS, Thresholds
from worker.engine.metrics.intervals import Estimate, bonferroni_confidence, paired_bootstrap, wilson

Verdict = Literal["robust", "shallow", "inconclusive"]
InconclusiveReason = Literal["too_few_rows", "interval_spans_threshold", "no_control", "nothing_forgotten"]
# In the order a verdict gives them (see the module docstring, rule 5).
REASONS: tuple[InconclusiveReason, ...] = (
    "too_few_rows",
    "nothing_forgotten",
    "no_control",
    "interval_spans_threshold",
)

# The interval one accuracy must be able to reach for a verdict to be possible at all (the default threshold);
# lethe.attacks.MIN_ROWS = minimum_rows(REQUIRED_HALF_WIDTH), written out there for the torch- and scipy-free API.
REQUIRED_HALF_WIDTH = 0.25


def minimum_rows(half_width: float) -> int:
    """The smallest n at which a 95% Wilson interval of an accuracy at 0.5 (its widest) is within ±half_width."""
    n = 1
    while True:
        low, high = wilson(n / 2, n)
        if (high - low) / 2 <= half_width:
            return n
        n += 1


class AttackNotApplicable(ValueError):
    """The attack has nothing to measure on this forget job's rows (e.g. paraphrase with no paraphrased question).

    The audit goes on without it and lists it as skipped, with this message as the reason.
    """


class RowScores(float):
    """A mean score (a float, as shown and compared) that keeps the per-row scores it is the mean of.

    Every score an attack reports is one, so the verdict can resample the rows; it is a float so that the mean is
    what arithmetic, JSON and the report see.
    """

    rows: tuple[float, ...]

    def __new__(cls, rows: Sequence[float]) -> RowScores:
        values = tuple(float(value) for value in rows)
        if not values:
            raise ValueError("a score of no rows is undefined")
        scores = super().__new__(cls, sum(values) / len(values))
        scores.rows = values
        return scores

    def __reduce__(self) -> tuple[type[RowScores], tuple[tuple[float, ...]]]:
        # copy and pickle rebuild it from its rows (float's own reduction would pass the mean as the rows).
        return RowScores, (self.rows,)


def rows_of(score: float, what: str) -> tuple[float, ...]:
    """The per-row scores of `score` (ValueError naming `what` if it is a bare mean)."""
    if not isinstance(score, RowScores):
        raise ValueError(f"{what} is a bare mean: attacks report RowScores, so that rows can be resampled")
    return score.rows


@dataclass
class Variant:
    """One configuration of an attack and the scores it left the forgotten LM with.

    `before` / `after_forgetting` override the attack's own where the variant has its own reference (a probe's
    layer, a paraphrase's rows, in-context's shots); `control` is the trigger attack's pre-forgetting LM on
    triggered rows; `control_before` / `control_after` the never-learned control's scores before and after the same
    attack (relearn, in_context, probe, where the forget job fine-tuned first).
    """

    name: str
    after_attack: float
    before: float | None = None
    after_forgetting: float | None = None
    control: float | None = None
    layer: int | None = None
    control_before: float | None = None
    control_after: float | None = None


@dataclass
class AttackOutcome:
    """An attack's measurements: the score it tracks, on which split, three ways, per variant, with curves.

    `curves[variant]` lists (step, score) points, step 0 being the forgotten LM (relearning); a control's curve is
    named `control <variant>`.
    `effect` is `recovery` for every attack but trigger (`damage`).
    `chance` is the score of guessing where it has one (accuracy on choice rows), else None.
    """

    metric: str
    split: str
    before: float
    after_forgetting: float
    variants: list[Variant]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    effect: Literal["recovery", "damage"] = "recovery"
    chance: float | None = None


@dataclass(frozen=True)
class Interval:
    """A variant's statistic with its interval (None where it cannot be drawn)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, estimate: Estimate | None) -> Interval:
        if estimate is None or not np.isfinite(estimate.value):
            return cls(None, None, None)
        return cls(estimate.value, estimate.ci_low, estimate.ci_high)

    def above(self, threshold: float) -> bool:
        return self.ci_low is not None and self.ci_low > threshold

    def below(self, threshold: float) -> bool:
        return self.ci_high is not None and self.ci_high < threshold


NO_INTERVAL = Interval(None, None, None)


@dataclass(frozen=True)
class VariantResult:
    """A variant's means, its rate with its interval (ci_* bound `recovery`, or `excess_drop` for trigger), and the
    control's numbers where it has one; `confidence` is the Bonferroni level its intervals are drawn at."""

    name: str
    layer: int | None
    before: float
    after_forgetting: float
    after_attack: float
    n: int
    confidence: float
    recovery: float | None
    excess_drop: float | None
    ci_low: float | None
    ci_high: float | None
    control_recovery: float | None
    control_ci_low: float | None
    control_ci_high: float | None
    excess_recovery: float | None
    excess_ci_low: float | None
    excess_ci_high: float | None

    @property
    def effect(self) -> Interval:
        """The rate the verdict compares with a threshold when there is no control (recovery or excess drop)."""
        value = self.excess_drop if self.recovery is None else self.recovery
        return Interval(value, self.ci_low, self.ci_high)

    @property
    def excess(self) -> Interval:
        return Interval(self.excess_recovery, self.excess_ci_low, self.excess_ci_high)

    @property
    def has_rate(self) -> bool:
        return self.effect.value is not None

    @property
    def evidence(self) -> Interval:
        """What the verdict reads: the excess over the control where there is one, else the rate itself."""
        return self.excess if self.excess_recovery is not None else self.effect


@dataclass(frozen=True)
class Judgement:
    """An attack's verdict (with its reason when inconclusive), the deciding variant's numbers and every variant's."""

    worst: VariantResult
    verdict: Verdict
    reason: InconclusiveReason | None
    variants: list[VariantResult]
    chance: float | None

    @property
    def worst_variant(self) -> str:
        return self.worst.name


def _floor(after_forgetting: np.ndarray, chance: float | None) -> np.ndarray:
    return after_forgetting if chance is None else np.maximum(after_forgetting, chance)


def _share(gain: np.ndarray, before: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """clip(gain / (before − floor), 0, 1): the share of what forgetting removed; NaN where before ≤ floor."""
    forgotten = before - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.clip(gain / forgotten, 0.0, 1.0)
    return np.where(forgotten > 0, share, np.nan)


def _judge_variant(
    variant: Variant, outcome: AttackOutcome, rate_defined: bool, confidence: float, seed: int
) -> VariantResult:
    """The variant's means, rates and paired-bootstrap intervals at `confidence`."""
    before = outcome.before if variant.before is None else variant.before
    after_forgetting = outcome.after_forgetting if variant.after_forgetting is None else variant.after_forgetting
    columns = [
        rows_of(before, f"{variant.name}: before"),
        rows_of(after_forgetting, f"{variant.name}: after_forgetting"),
        rows_of(variant.after_attack, f"{variant.name}: after_attack"),
    ]
    chance = outcome.chance
    rate = control = excess = NO_INTERVAL

    def interval(statistic: Callable[[np.ndarray], np.ndarray]) -> Interval:
        if len({len(column) for column in columns}) != 1:
            raise ValueError(f"variant {variant.name} has scores of different numbers of rows: they must be paired")
        return Interval.of(paired_bootstrap(columns, statistic, seed, confidence))

    # In every statistic m holds the columns' means: m[0] before, m[1] after_forgetting, m[2] after_attack, then
    # the trigger's control (m[3]) or the never-learned control before and after the attack (m[3], m[4]).
    if outcome.effect == "damage":
        if variant.control is None:
            raise ValueError(f"trigger variant {variant.name} has no control")
        columns.append(rows_of(variant.control, f"{variant.name}: control"))
        rate = interval(lambda m: (m[1] - m[2]) - np.maximum(0.0, m[0] - m[3]))
    elif rate_defined:

        def recovery(m: np.ndarray) -> np.ndarray:
            return _share(m[2] - _floor(m[1], chance), m[0], _floor(m[1], chance))

        def control_recovery(m: np.ndarray) -> np.ndarray:
            return _share(m[4] - m[3], m[0], _floor(m[1], chance))

        rate = interval(recovery)
        if variant.control_before is not None and variant.control_after is not None:
            columns.append(rows_of(variant.control_before, f"{variant.name}: control_before"))
            columns.append(rows_of(variant.control_after, f"{variant.name}: control_after"))
            control = interval(control_recovery)
            excess = interval(lambda m: recovery(m) - control_recovery(m))
    damage = outcome.effect == "damage"
    return VariantResult(
        name=variant.name,
        layer=variant.layer,
        before=float(before),
        after_forgetting=float(after_forgetting),
        after_attack=float(variant.after_attack),
        n=len(columns[2]),
        confidence=confidence,
        recovery=None if damage else rate.value,
        excess_drop=rate.value if damage else None,
        ci_low=rate.ci_low,
        ci_high=rate.ci_high,
        control_recovery=control.value,
        control_ci_low=control.ci_low,
        control_ci_high=control.ci_high,
        excess_recovery=excess.value,
        excess_ci_low=excess.ci_low,
        excess_ci_high=excess.ci_high,
    )


def judge(attack: str, outcome: AttackOutcome, thresholds: Thresholds, seed: int) -> Judgement:
    """Every variant's rates with intervals, the attack's verdict and, when inconclusive, why (module docstring)."""
    if not outcome.variants:
        raise ValueError(f"attack {attack} measured no variant")
    damage = outcome.effect == "damage"
    threshold = thresholds.trigger_drop if damage else thresholds.recovery_for(attack)
    controlled = ATTACKS.get(attack).controlled
    confidence = bonferroni_confidence(len(outcome.variants))
    chance = outcome.chance

    def forgot(before: float, after_forgetting: float) -> bool:
        floor = after_forgetting if chance is None else max(after_forgetting, chance)
        return before - floor >= thresholds.min_forgetting and before - floor > 0

    # Nothing forgotten on what the attack measures: no variant has a rate, whatever its own references say.
    attack_forgot = forgot(outcome.before, outcome.after_forgetting)
    results = []
    for variant in outcome.variants:
        before = outcome.before if variant.before is None else variant.before
        after_forgetting = outcome.after_forgetting if variant.after_forgetting is None else variant.after_forgetting
        rate_defined = attack_forgot and forgot(before, after_forgetting)
        results.append(_judge_variant(variant, outcome, rate_defined, confidence, seed))

    enough = [r for r in results if r.n >= MIN_ROWS]
    rated = [r for r in enough if r.has_rate]
    shallow = [r for r in rated if r.evidence.above(threshold) and (r.excess_recovery is not None or not controlled)]
    verdict: Verdict
    reason: InconclusiveReason | None = None
    if shallow:
        verdict = "shallow"
    elif rated and len(enough) == len(results) and all(r.evidence.below(threshold) for r in rated):
        verdict = "robust"
    else:
        verdict = "inconclusive"
        if len(enough) < len(results):
            reason = "too_few_rows"
        elif not rated:
            reason = "nothing_forgotten"
        elif controlled and any(r.excess_recovery is None and not r.evidence.below(threshold) for r in rated):
            reason = "no_control"
        else:
            reason = "interval_spans_threshold"
    # The deciding variant: the strongest evidence of shallowness (highest lower end) when shallow; else the one
    # furthest from robust (highest upper end; no interval at all counts as furthest); ties to the larger value.
    deciding = shallow or rated or results

    def strength(result: VariantResult) -> tuple[float, float]:
        value = result.evidence.value
        if shallow:
            end = result.evidence.ci_low if result.evidence.ci_low is not None else float("-inf")
        else:
            end = result.evidence.ci_high if result.evidence.ci_high is not None else float("inf")
        return (end, float("-inf") if value is None else value)

    worst = max(deciding, key=strength)
    return Judgement(worst=worst, verdict=verdict, reason=reason, variants=results, chance=chance)


def overall_verdict(judgements: Sequence[Judgement]) -> tuple[Verdict, list[InconclusiveReason]]:
    """`shallow` if any attack is; `robust` if every conclusive attack is and there is one; else `inconclusive`;
    with the reasons of the inconclusive attacks (in REASONS' order, each once)."""
    verdicts = [judgement.verdict for judgement in judgements]
    reasons = {judgement.reason for judgement in judgements if judgement.reason is not None}
    ordered = [reason for reason in REASONS if reason in reasons]
    if "shallow" in verdicts:
        return "shallow", ordered
    return ("robust" if "robust" in verdicts else "inconclusive"), ordered
