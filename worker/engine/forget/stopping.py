"""When forgetting stops early: at the target (forget-train no better known than guessing, or than unseen rows),
when forget-heldout falls below chance (random_label's `heldout_below_chance`), or past the utility floor (retain
dropped too far), with the best checkpoint that kept the floor restored."""

from __future__ import annotations

from collections.abc import Mapping

from peft import PeftModel

from lethe.methods import MethodParams
from worker.engine.forget.splits import FORGET_HELDOUT, FORGET_TRAIN, Splits
from worker.engine.lm.lora import LoraState, load_lora_state, lora_state


class Checkpoints:
    """The LoRA weights of the most-forgotten evaluation that kept the utility floor (lowest forget score)."""

    def __init__(self, peft_lm: PeftModel) -> None:
        self.peft_lm = peft_lm
        self.best_score = float("inf")
        self.best: LoraState = {}

    def offer(self, forget_score: float) -> None:
        if forget_score < self.best_score:
            self.best_score = forget_score
            self.best = lora_state(self.peft_lm)

    def restore_best(self) -> None:
        load_lora_state(self.peft_lm, self.best)


class StopRule:
    """Decides, from the primary scores of an evaluation during forgetting, whether forgetting stops and why.

    `before` holds every split's primary score right before forgetting. The target is chance plus the tolerance
    for choice rows (the seed paper's goal), else forget-heldout's score before forgetting plus the tolerance:
    forget-train known no better than rows the LM never trained on. The utility floor bounds the mean drop of the
    retain splits' scores; past it, the best checkpoint that kept it comes back. Which early stop applies is
    `params.stop_rule()`: `target`, `heldout_below_chance` (forget-heldout accuracy strictly below its chance, the
    rule of Unforgettable Generalization) or `budget` (none: only epochs and max_steps end the run).
    """

    def __init__(self, params: MethodParams, splits: Splits, before: Mapping[str, float], peft_lm: PeftModel) -> None:
        self.params = params
        self.retain_before = {split: before[split] for split in splits.retain}
        self.target = self.target_of(params, splits, before)
        self.rule = params.stop_rule()
        if self.rule == "heldout_below_chance" and FORGET_HELDOUT not in splits.chances:
            raise ValueError("heldout_below_chance needs choice rows (a chance accuracy)")
        self.heldout_chance = splits.chances.get(FORGET_HELDOUT, 0.0)
        self.checkpoints = Checkpoints(peft_lm)
        self.checkpoints.offer(before[FORGET_TRAIN])  # forgetting nothing always keeps the floor

    @staticmethod
    def target_of(params: MethodParams, splits: Splits, before: Mapping[str, float]) -> float:
        """Forget-train's target primary score: chance + tolerance (choice rows), else forget-heldout's score before
        forgetting + tolerance."""
        kind = splits.kinds[FORGET_TRAIN]
        reference = splits.chances[FORGET_TRAIN] if kind == "choice" else before[FORGET_HELDOUT]
        return reference + params.target_tolerance

    def __call__(self, scores: Mapping[str, float]) -> str | None:
        """`target`, `heldout_below_chance`, `utility_floor` (the best checkpoint restored), or None to go on."""
        if self.params.utility_floor is not None and self.retain_before:
            drop = sum(before - scores[split] for split, before in self.retain_before.items()) / len(self.retain_before)
            if drop > self.params.utility_floor:
                self.checkpoints.restore_best()
                return "utility_floor"
            self.checkpoints.offer(scores[FORGET_TRAIN])
        if self.rule == "target" and scores[FORGET_TRAIN] <= self.target:
            return "target"
        if self.rule == "heldout_below_chance" and scores[FORGET_HELDOUT] < self.heldout_chance:
            return "heldout_below_chance"
        return None
