"""What a job will cost, estimated before it is accepted, in training example-passes (torch-free).

One example-pass is one row through a forward and a backward pass. A row scored without gradients (an
evaluation) counts as a third of one: its forward alone, the backward costing about twice the forward (the ratio
the worker's progress model uses, worker/engine/forget/progress.py). The estimate is an upper bound of what the
job asks for, from the catalogue's row counts and the validated params; a run that stops early (stop_at_target,
utility_floor) costs less.

Left out, each small next to the terms counted: the reference LM's forwards (npo, idk, kl retain losses), the
probe of hidden states, the built-in general-text perplexity, a choice row's several choices, and the audit's
forward-only attacks (each scores a forget split a few times, or once per decoder block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lethe.attacks import RelearnParams
from lethe.methods import LWFParams, MethodParams
from lethe.rows import heldout_count
from lethe.specs import AuditSpec, ForgetJobSpec

# A scored row is a third of a trained one (see the module docstring).
SCORED_ROW = 1 / 3


@dataclass(frozen=True)
class CostEstimate:
    """A job's estimated cost: its named terms, in example-passes, and their sum."""

    terms: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def describe(self) -> str:
        """`12,345 example-passes (forget 10,000 + evaluation 2,345)`."""
        terms = " + ".join(f"{name} {value:,.0f}" for name, value in self.terms.items() if value)
        return f"{self.total:,.0f} example-passes ({terms or 'nothing'})"


@dataclass(frozen=True)
class _Split:
    """A forget dataset's forget-train and forget-heldout sizes, as `lethe.rows.split_heldout` makes them."""

    train: int
    heldout: int

    @classmethod
    def of(cls, rows: int, heldout_fraction: float) -> _Split:
        heldout = min(max(heldout_count(rows, heldout_fraction), 1), rows - 1)
        return cls(train=rows - heldout, heldout=heldout)


def forget_request_cost(
    spec: ForgetJobSpec, forget_rows: int, retain_rows: int, parent_forget_rows: int = 0
) -> CostEstimate:
    """The cost of a forget job (and of the audit it requests), forget_rows and retain_rows being the row counts
    of its forget dataset and of its retain datasets together, parent_forget_rows those of the forget datasets of
    a stacked request's parent and ancestors (scored at every evaluation too).

    With n forget-train rows, R retain rows, batch size b, E forgetting epochs and max_steps S:
        finetune   = n * finetune epochs
        epoch      = ceil(n / b) steps (lwf: ceil(R / b), its epochs pass over the learning data)
        steps      = min(E * epoch + U, S), U = 0 (lwf: (E * epoch − 1) // interval unlearning steps)
        forget     = min(E * n, S * b) (lwf: U' * min(b, m), m = ceil(top_fraction * n) texts, U' the unlearning
                     steps among the steps: U, or S // (interval + 1) when S cuts the run short)
        retain     = steps * min(b, R) if the method trains on retain rows (lwf: min(E * R, (steps − U') * b)
                     learning rows, plus its fisher_rows)
        lwf adds     2 * n for generating each row's continuation and its confidence gradient
        evaluation = (2 evaluations, 3 with a fine-tune, one more from a parent adapter, + one per check while
                     forgetting) * all rows / 3,
                     a check coming every evaluate_every steps, or every epoch
        audit      = audit_cost(...) of the requested audit
    """
    params = spec.method.parsed()
    split = _Split.of(forget_rows, spec.heldout_fraction)
    n = split.train
    b = params.batch_size
    steps_per_epoch = max(math.ceil(params.epoch_rows(n, retain_rows) / b), 1)
    epoch_steps = params.epochs * steps_per_epoch
    interleaved = params.interleaved_steps(epoch_steps)
    steps = min(epoch_steps + interleaved, params.max_steps or math.inf)
    if isinstance(params, LWFParams):
        unlearning = interleaved if steps == epoch_steps + interleaved else steps // (params.interval + 1)
        forget = unlearning * min(b, math.ceil(params.top_fraction * n))
        retain = min(params.epochs * retain_rows, (steps - unlearning) * b) + min(params.fisher_rows, retain_rows)
    else:
        forget = min(params.epochs * n, (params.max_steps or math.inf) * b)
        retain = steps * min(b, retain_rows) if params.needs_retain() else 0
    terms = {
        "finetune": float(n * spec.finetune.epochs) if spec.finetune else 0.0,
        "forget": float(forget),
        "retain": float(retain),
        "preparation": 2.0 * n if isinstance(params, LWFParams) else 0.0,
        "evaluation": _evaluation_rows(params, spec, steps, (epoch_steps + interleaved) / params.epochs)
        * (forget_rows + retain_rows + parent_forget_rows)
        * SCORED_ROW,
    }
    if spec.audit is not None:
        terms["audit"] = audit_cost(spec.audit, spec, forget_rows, retain_rows).total
    return CostEstimate(terms)


def _evaluation_rows(params: MethodParams, spec: ForgetJobSpec, steps: float, steps_per_epoch: float) -> float:
    """How many times every row is scored: before forgetting, after the fine-tune, after forgetting, and at each
    check while forgetting (worker/engine/forget/progress.py plans the same)."""
    full = (3 if spec.finetune else 2) + (1 if spec.parent_adapter is not None else 0)
    checks = math.ceil(steps / steps_per_epoch) if params.evaluate_every is None else steps // params.evaluate_every
    return float(full + checks)


def audit_cost(audit: AuditSpec, forget_spec: ForgetJobSpec, forget_rows: int, retain_rows: int) -> CostEstimate:
    """The cost of an audit of a forget job, from its relearn attack (the only one that trains).

    With the forget job's n forget-train and h forget-heldout rows and batch size b, relearn's sizes k_i =
    min(k, n), its steps T and evaluate_every v:
        relearn            = sum_i T * min(k_i, b), plus T * min(max_i k_i, retain_rows, b) for the benign curve
        relearn_evaluation = curves * (ceil(T / v) + 1) * h / 3
    """
    relearn = next((attack for attack in audit.attacks if attack.name == "relearn"), None)
    if relearn is None:
        return CostEstimate({"relearn": 0.0, "relearn_evaluation": 0.0})
    params = relearn.parsed()
    assert isinstance(params, RelearnParams)
    split = _Split.of(forget_rows, forget_spec.heldout_fraction)
    batch_size = forget_spec.method.parsed().batch_size
    sizes = sorted({min(k, split.train) for k in params.examples})
    passes = sum(params.steps * min(k, batch_size) for k in sizes)
    curves = len(sizes)
    if params.benign and retain_rows:
        passes += params.steps * min(sizes[-1], retain_rows, batch_size)
        curves += 1
    evaluations = curves * (math.ceil(params.steps / params.evaluate_every) + 1)
    return CostEstimate({"relearn": float(passes), "relearn_evaluation": evaluations * split.heldout * SCORED_ROW})
