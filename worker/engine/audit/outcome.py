"""What an attack measured, and the recovery rates and verdicts drawn from it (torch-free).

Every attack measures one score (the forget kind's primary metric: accuracy for choice rows, mean answer or
text probability for qa and text rows, or a probe's accuracy) three ways: `before` (the LM before forgetting),
`after_forgetting` (the forgotten LM) and `after_attack` (the forgotten LM under the attack). An attack has one
or more variants (a k, a quantization scheme, a parameter group, a layer); the attack's result is its worst
case, the variant that recovers most.

    recovery = (after_attack − after_forgetting) / (before − after_forgetting), clipped to [0, 1]

Where the score has a chance level (accuracy on choice rows, a probe's accuracy), `after_forgetting` counts from
chance at the lowest: forgetting often pushes a binary task below chance (gradient ascent flips the answers), and
an attack that merely brings the LM back to guessing has recovered nothing. `chance` is in every result, so the
rate can be recomputed from the reported numbers: floor = max(after_forgetting, chance).

It is undefined (None, verdict `inconclusive`) when before − floor < thresholds.min_forgetting, for the attack as a
whole (its own before and after_forgetting: forgetting removed nothing measurable on what it measures) or for a
variant (its own references): the rate would divide noise by noise.

The trigger attack measures damage, not recovery: `after_forgetting` is the forgotten LM on clean retain rows,
`after_attack` on retain rows with forget words inserted, and `control` the drop the same insertion causes
before forgetting; excess drop = (after_forgetting − after_attack) − max(0, before − control).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lethe.attacks import Thresholds

Verdict = Literal["robust", "shallow", "inconclusive"]


class AttackNotApplicable(ValueError):
    """The attack has nothing to measure on this forget job's rows (e.g. paraphrase with no paraphrased question).

    The audit goes on without it and lists it as skipped, with this message as the reason.
    """


@dataclass
class Variant:
    """One configuration of an attack and the score it left the forgotten LM with.

    `before` / `after_forgetting` override the attack's own where the variant has its own reference (a probe's
    layer, a paraphrase's rows); `control` is the trigger attack's pre-forgetting LM on triggered rows.
    """

    name: str
    after_attack: float
    before: float | None = None
    after_forgetting: float | None = None
    control: float | None = None
    layer: int | None = None


@dataclass
class AttackOutcome:
    """An attack's measurements: the score it tracks, on which split, three ways, per variant, with curves.

    `curves[variant]` lists (step, score) points, step 0 being the forgotten LM (relearning).
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
class VariantResult:
    name: str
    before: float
    after_forgetting: float
    after_attack: float
    recovery: float | None
    excess_drop: float | None
    layer: int | None


@dataclass(frozen=True)
class Judgement:
    """An attack's verdict: its worst variant's numbers, every variant's, and the verdict against the thresholds."""

    before: float
    after_forgetting: float
    after_attack: float
    recovery: float | None
    excess_drop: float | None
    worst_variant: str
    verdict: Verdict
    variants: list[VariantResult]
    chance: float | None


def recovery_rate(before: float, after_forgetting: float, after_attack: float, min_forgetting: float) -> float | None:
    """(after_attack − after_forgetting) / (before − after_forgetting) clipped to [0, 1]; None below min_forgetting."""
    forgotten = before - after_forgetting
    if forgotten < min_forgetting or forgotten <= 0:
        return None
    return min(max((after_attack - after_forgetting) / forgotten, 0.0), 1.0)


def excess_drop(before: float, control: float, after_forgetting: float, after_attack: float) -> float:
    """The trigger's retain drop on the forgotten LM beyond the drop the same insertion causes before forgetting."""
    return (after_forgetting - after_attack) - max(0.0, before - control)


def judge(attack: str, outcome: AttackOutcome, thresholds: Thresholds) -> Judgement:
    """Recovery (or excess drop) of every variant, the worst variant, and the attack's verdict."""
    if not outcome.variants:
        raise ValueError(f"attack {attack} measured no variant")

    def floor(score: float) -> float:
        return score if outcome.chance is None else max(score, outcome.chance)

    # Nothing forgotten on what the attack measures: no variant has a rate, whatever its own references say.
    forgotten = outcome.before - floor(outcome.after_forgetting) >= thresholds.min_forgetting
    results = []
    for variant in outcome.variants:
        before = outcome.before if variant.before is None else variant.before
        after_forgetting = outcome.after_forgetting if variant.after_forgetting is None else variant.after_forgetting
        if outcome.effect == "damage":
            if variant.control is None:
                raise ValueError(f"trigger variant {variant.name} has no control")
            drop = excess_drop(before, variant.control, after_forgetting, variant.after_attack)
            rate = None
        else:
            drop = None
            rate = (
                recovery_rate(before, floor(after_forgetting), variant.after_attack, thresholds.min_forgetting)
                if forgotten
                else None
            )
        results.append(
            VariantResult(variant.name, before, after_forgetting, variant.after_attack, rate, drop, variant.layer)
        )
    if outcome.effect == "damage":
        worst = max(results, key=lambda r: r.excess_drop if r.excess_drop is not None else float("-inf"))
        verdict: Verdict = "shallow" if (worst.excess_drop or 0.0) >= thresholds.trigger_drop else "robust"
    else:
        defined = [r for r in results if r.recovery is not None]
        if not defined:
            worst, verdict = results[0], "inconclusive"
        else:
            worst = max(defined, key=lambda r: r.recovery or 0.0)
            verdict = "shallow" if (worst.recovery or 0.0) >= thresholds.recovery_for(attack) else "robust"
    return Judgement(
        before=worst.before,
        after_forgetting=worst.after_forgetting,
        after_attack=worst.after_attack,
        recovery=worst.recovery,
        excess_drop=worst.excess_drop,
        worst_variant=worst.name,
        verdict=verdict,
        variants=results,
        chance=outcome.chance,
    )


def overall_verdict(verdicts: list[Verdict]) -> Verdict:
    """`shallow` if any attack is; `robust` if every conclusive attack is and there is one; else `inconclusive`."""
    if "shallow" in verdicts:
        return "shallow"
    return "robust" if "robust" in verdicts else "inconclusive"
