"""The base stage's scores, kept for the next job on the same base LM and rows (and only for such a job)."""

import copy

import pytest
import torch

from lethe.rows import ChoiceRow, split_heldout
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget import run as forget_run
from worker.engine.forget.base_stage import BaseStageCache, base_stage_key, weights_digest
from worker.engine.forget.run import ForgetPlan, run_forget
from worker.engine.lm.load import LoadedLM

FORGET_TRAIN, FORGET_HELDOUT = split_heldout(
    [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(24, seed=0)], 0.25, seed=0
)
RETAIN = {"more": [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(8, seed=99)]}


def _plan(probe: bool, seed: int = 0) -> ForgetPlan:
    params = {"learning_rate": 1e-3, "batch_size": 8, "max_steps": 1}
    return ForgetPlan(method="gradient_ascent", method_params=params, finetune=None, probe=probe, seed=seed)


def _count_base_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    stages: list[str] = []
    evaluate = forget_run._Run.evaluate

    def counting(self, lm, stage, collect_hidden):  # type: ignore[no-untyped-def]
        stages.append(stage)
        return evaluate(self, lm, stage, collect_hidden)

    monkeypatch.setattr(forget_run._Run, "evaluate", counting)
    return stages


def test_a_second_job_on_the_same_base_and_rows_reuses_the_base_stage(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = _count_base_evaluations(monkeypatch)
    cache = BaseStageCache()
    progress: list[list[float]] = [[], []]
    outcomes = [
        run_forget(
            tiny_base,
            _plan(probe=True),
            FORGET_TRAIN,
            FORGET_HELDOUT,
            RETAIN,
            lambda _s, f, i=i: progress[i].append(f),  # type: ignore[misc]
            base_stages=cache,
        )
        for i in range(2)
    ]
    assert stages.count("base") == 1 and cache.hits == 1
    first, second = ([m for m in o.metrics if m.stage == "base"] for o in outcomes)
    assert first == second and first
    assert outcomes[0].per_example["base"] == outcomes[1].per_example["base"]
    # The probes ran on the cached hidden states too, and every metric of the job is there.
    assert [m for m in outcomes[0].metrics] == [m for m in outcomes[1].metrics]
    assert any(m.name == "probe_accuracy" for m in outcomes[1].metrics)
    # Progress still rises to 1.0 without going back.
    assert progress[1] == sorted(progress[1]) and progress[1][-1] == 1.0

    # Other rows, another seed, or no cache: evaluated again.
    run_forget(
        tiny_base, _plan(probe=True, seed=1), FORGET_TRAIN, FORGET_HELDOUT, RETAIN, lambda *_: None, base_stages=cache
    )
    run_forget(tiny_base, _plan(probe=True), FORGET_TRAIN, FORGET_HELDOUT, {}, lambda *_: None, base_stages=cache)
    run_forget(tiny_base, _plan(probe=True), FORGET_TRAIN, FORGET_HELDOUT, RETAIN, lambda *_: None, base_stages=None)
    assert stages.count("base") == 4


def test_the_key_names_everything_the_scores_depend_on(tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch) -> None:
    splits = {"forget_train": FORGET_TRAIN, "forget_heldout": FORGET_HELDOUT}
    settings = {"batch_size": 8, "seed": 0, "collect_hidden": False}
    monkeypatch.setenv("LETHE_PRECISION", "fp32")  # whatever the suite runs under
    key = base_stage_key(tiny_base.lm, splits, **settings)
    assert key == base_stage_key(tiny_base.lm, dict(splits), **settings)
    # Another heldout split of the same rows.
    moved = {"forget_train": FORGET_TRAIN[1:], "forget_heldout": [FORGET_TRAIN[0], *FORGET_HELDOUT]}
    assert base_stage_key(tiny_base.lm, moved, **settings) != key
    for change in ({"batch_size": 4}, {"seed": 1}, {"collect_hidden": True}):
        assert base_stage_key(tiny_base.lm, splits, **(settings | change)) != key
    monkeypatch.setenv("LETHE_PRECISION", "bf16")
    assert base_stage_key(tiny_base.lm, splits, **settings) != key
    monkeypatch.setenv("LETHE_PRECISION", "fp32")
    # Other weights (one value changed), same architecture and name.
    other = copy.deepcopy(tiny_base.lm)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1.0
    assert weights_digest(other) != weights_digest(tiny_base.lm)
    assert base_stage_key(other, splits, **settings) != key
