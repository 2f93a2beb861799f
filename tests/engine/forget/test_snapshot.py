"""A forget run killed after a snapshot and resumed from it (through its safetensors + JSON form) ends exactly as the
run that was never killed: the same adapter, bit for bit, the same steps, stop reason, metrics (with their intervals)
and curve points."""

import json
import math
from dataclasses import dataclass

import pytest
import torch

from lethe.rows import ChoiceRow, split_heldout
from lethe.specs import FinetuneSpec
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget.run import ForgetOutcome, ForgetPlan, run_forget
from worker.engine.forget.snapshot import ForgetSnapshot, Snapshots, decode_snapshot, encode_snapshot
from worker.engine.lm.load import LoadedLM

FORGET_TRAIN, FORGET_HELDOUT = split_heldout(
    [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(48, seed=0)], 0.25, seed=0
)
RETAIN = {"more": [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(20, seed=99)]}


class Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` catches it."""


@dataclass(frozen=True)
class Case:
    method: str
    params: dict
    finetune: FinetuneSpec | None
    kill_after: int  # snapshots taken before the kill (one at each training stage's start, then every 2 steps)
    killed_stage: str
    stop_reason: str
    probe: bool = False


# 36 forget-train rows in batches of 8: 5 steps an epoch.
CASES = {
    # Retain rows from the retain stream, RNA's noise from torch's generator, an evaluation after every epoch;
    # killed at step 10, the last of epoch 1, whose evaluation comes after the snapshot.
    "grad_diff_rna": Case(
        "grad_diff", {"epochs": 3, "rna_noise_std": 0.5, "stop_at_target": False}, None, 6, "forget", "epochs"
    ),
    # Killed at forgetting's step 4 after a 10-step fine-tune, which is not redone, nor its evaluation and probe.
    "npo_after_finetune": Case(
        "npo",
        {"epochs": 2, "evaluate_every": 2, "stop_at_target": False},
        FinetuneSpec(epochs=2, learning_rate=1e-2),
        9,
        "forget",
        "epochs",
        probe=True,
    ),
    # Killed at the fine-tune's step 4.
    "killed_while_finetuning": Case(
        "gradient_ascent",
        {"epochs": 2, "stop_at_target": False},
        FinetuneSpec(epochs=3, learning_rate=1e-2),
        3,
        "finetune",
        "epochs",
    ),
    # LWF prepares from the weights forgetting starts with (its texts, their Fisher confidences): after a fine-tune,
    # so these are not LoRA's initial ones.
    "lwf_after_finetune": Case(
        "lwf",
        {"epochs": 2, "max_new_tokens": 4, "stop_at_target": False},
        FinetuneSpec(epochs=1, learning_rate=1e-2),
        6,
        "forget",
        "epochs",
    ),
    # Stopped by the evaluator past the utility floor (at step 18), which restores the best evaluated weights;
    # killed at forgetting's step 10 after a 15-step fine-tune.
    "utility_floor": Case(
        "gradient_ascent",
        {"learning_rate": 1e-2, "epochs": 20, "evaluate_every": 1, "utility_floor": 0.25, "stop_at_target": False},
        FinetuneSpec(epochs=3, learning_rate=1e-2),
        14,
        "forget",
        "utility_floor",
    ),
}


def plan(case: Case) -> ForgetPlan:
    params = {"learning_rate": 1e-3, "batch_size": 8} | case.params
    return ForgetPlan(method=case.method, method_params=params, finetune=case.finetune, probe=case.probe, seed=0)


def run(base: LoadedLM, case: Case, snapshots: Snapshots | None = None) -> ForgetOutcome:
    return run_forget(base, plan(case), FORGET_TRAIN, FORGET_HELDOUT, RETAIN, lambda *_: None, snapshots=snapshots)


def killed_run(base: LoadedLM, case: Case) -> ForgetSnapshot:
    """Run `case` until its `kill_after`-th snapshot, storing each as bytes and JSON; the last one, read back."""
    stored: list[tuple[bytes, str]] = []

    def save(snapshot: ForgetSnapshot) -> None:
        data, fields = encode_snapshot(snapshot)
        stored.append((data, json.dumps(fields)))
        if len(stored) == case.kill_after:
            raise Killed

    with pytest.raises(Killed):
        run(base, case, Snapshots(every=2, save=save))
    data, fields = stored[-1]
    return decode_snapshot(data, json.loads(fields))


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("name", CASES)
def test_a_resumed_run_ends_as_the_uninterrupted_one(tiny_base: LoadedLM, name: str) -> None:
    case = CASES[name]
    uninterrupted = run(tiny_base, case)
    assert uninterrupted.forgetting.stop_reason == case.stop_reason
    snapshot = killed_run(tiny_base, case)
    assert snapshot.stage == case.killed_stage and snapshot.training.steps > 0
    resumed = run(tiny_base, case, Snapshots(every=2, save=lambda _: None, resume=snapshot))

    assert resumed.forgetting == uninterrupted.forgetting
    expected, actual = uninterrupted.adapter.state, resumed.adapter.state
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[n], actual[n]) for n in expected)
    assert all(torch.equal(uninterrupted.before_forgetting[n], resumed.before_forgetting[n]) for n in expected)
    probed = {m.stage for m in uninterrupted.metrics if m.name == "probe_accuracy"}
    assert probed == ({"finetuned", "forgotten"} if case.probe else set())
    assert len(resumed.metrics) == len(uninterrupted.metrics)
    for mine, theirs in zip(resumed.metrics, uninterrupted.metrics, strict=True):
        assert (mine.stage, mine.split, mine.name, mine.layer, mine.n) == (
            theirs.stage,
            theirs.split,
            theirs.name,
            theirs.layer,
            theirs.n,
        )
        assert same(mine.value, theirs.value), mine
        assert same(mine.ci_low, theirs.ci_low) and same(mine.ci_high, theirs.ci_high), mine
    assert resumed.curves == uninterrupted.curves and uninterrupted.curves
    assert json.dumps(resumed.per_example, sort_keys=True) == json.dumps(uninterrupted.per_example, sort_keys=True)
