"""How far a forget run is: its work planned in units of one forward pass over one example, reported as the
estimated fraction done (non-decreasing, corrected when forgetting stops early)."""

from __future__ import annotations

from collections.abc import Callable

from lethe.methods import MethodParams
from lethe.rows import ChoiceRow
from worker.engine.forget.splits import FORGET_SPLITS, FORGET_TRAIN, GENERAL_TEXT, Splits
from worker.engine.metrics.evaluate import progress_total

# A trained example costs about three forwards (the forward and a backward twice its cost), for the estimate only.
TRAIN_COST = 3.0


class Progress:
    """Reports the estimated fraction of the run done; the estimate shrinks when forgetting stops early.

    The plan: every split evaluated before forgetting (the base LM, and a stacked run's parent adapter: `parent`),
    after the optional fine-tune and after forgetting; the
    fine-tune's and forgetting's trained examples; forgetting's evaluations (the primary score of every tracked
    split); a probe of the forget splits' hidden states before and after forgetting.
    """

    def __init__(
        self,
        splits: Splits,
        params: MethodParams,
        finetune_epochs: int,
        probe: bool,
        on_progress: Callable[[str, float], None],
        parent: bool = False,
    ) -> None:
        self.on_progress = on_progress
        self.done = 0.0
        n_train = len(splits.rows[FORGET_TRAIN])
        evaluation_units = sum(
            float(len(rows)) if split == GENERAL_TEXT else float(progress_total(rows, split in FORGET_SPLITS))
            for split, rows in splits.rows.items()
        )
        evaluations = (3 if finetune_epochs else 2) + (1 if parent else 0)
        finetune_units = finetune_epochs * n_train * TRAIN_COST
        # An epoch passes over the forget-train rows (lwf: the retain rows, with its unlearning steps between).
        epoch_rows = params.epoch_rows(n_train, sum(len(splits.rows[split]) for split in splits.retain))
        epoch_steps = params.epochs * -(-epoch_rows // params.batch_size)
        self.forget_rows = params.epochs * epoch_rows + params.interleaved_steps(epoch_steps) * params.batch_size
        if params.max_steps is not None:
            self.forget_rows = min(self.forget_rows, params.max_steps * params.batch_size)
        self.checks = _planned_checks(params, epoch_rows)
        # One evaluation during forgetting: the primary score of every tracked split.
        self.check_units = sum(
            len(rows) * (len(rows[0].choices) if isinstance(rows[0], ChoiceRow) else 1.0)
            for split, rows in splits.rows.items()
            if split != GENERAL_TEXT
        )
        forget_units = self.forget_rows * TRAIN_COST + self.checks * self.check_units
        self.probe_units = 0.5 * sum(len(splits.rows[split]) for split in FORGET_SPLITS) if probe else 0.0
        self.total = evaluations * evaluation_units + finetune_units + forget_units + 2 * self.probe_units

    def advance(self, stage: str, units: float) -> None:
        self.done += units
        self.on_progress(stage, min(self.done / self.total, 1.0))

    def started(self, stage: str) -> None:
        """`stage` begins (finetuning or forgetting): reported now, not only after its first optimiser step, so that
        a job shows the stage it is in and a second job's start (its base stage cached) can be timed."""
        self.advance(stage, 0.0)

    def trained(self, stage: str, rows: int) -> None:
        """`rows` examples trained on in `stage` (finetuning or forgetting)."""
        self.advance(stage, rows * TRAIN_COST)

    def forgetting_stopped(self, trained_rows: int, checks: int) -> None:
        """Forgetting ended after `trained_rows` examples and `checks` evaluations: drop the planned work left."""
        self._drop((self.forget_rows - trained_rows) * TRAIN_COST)
        self._drop(max(self.checks - checks, 0) * self.check_units)

    def _drop(self, units: float) -> None:
        self.total = max(self.total - units, self.done, 1e-9)


def _planned_checks(params: MethodParams, epoch_rows: int) -> int:
    """The evaluations forgetting makes if it runs to the end: every `evaluate_every` steps, or after every epoch."""
    epoch_steps = params.epochs * max(-(-epoch_rows // params.batch_size), 1)
    planned = epoch_steps + params.interleaved_steps(epoch_steps)
    steps = min(planned, params.max_steps or 10**9)
    if params.evaluate_every is None:
        return -(-steps * params.epochs // planned)
    return steps // params.evaluate_every
