"""Stacked runs: a child run continues its parent adapter (its LoRA starts from the parent's weights, read from the
parent's archive) and scores the parent's forget sets at every stage."""

import pytest
import torch

from lethe.rows import ChoiceRow, split_heldout
from tests.engine.forget.test_run import FORGET_HELDOUT, FORGET_TRAIN, RETAIN, plan
from tests.engine.lm.test_adapter import MISSED, PROVENANCE
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget.run import PARENT_STAGE, ForgetOutcome, ParentAdapter, ParentMismatch, run_forget
from worker.engine.lm.adapter import adapter_archive, archived_weights
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attached_lora

# The child forgets other rows of the task than the parent did.
CHILD_TRAIN, CHILD_HELDOUT = split_heldout(
    [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(64, seed=7)], 0.25, seed=0
)
PARENT_SPLITS = ("parent_forget_train:parent-set", "parent_forget_heldout:parent-set")


def _run(base: LoadedLM, train, heldout, parent: ParentAdapter | None = None, **params) -> ForgetOutcome:
    forget_plan = plan("gradient_ascent", probe=False, finetune=None, stop_at_target=False, **params)
    return run_forget(base, forget_plan, train, heldout, RETAIN, lambda stage, f: None, parent=parent)


@pytest.fixture(scope="module")
def parent(tiny_base: LoadedLM) -> ForgetOutcome:
    return _run(tiny_base, FORGET_TRAIN, FORGET_HELDOUT, max_steps=3)


@pytest.fixture(scope="module")
def parent_weights(tiny_base: LoadedLM, parent: ForgetOutcome) -> dict[str, torch.Tensor]:
    """The parent's weights as a child job reads them: from the stored archive's safetensors."""
    with attached_lora(tiny_base.lm, parent.adapter.config, parent.adapter.state) as peft_lm:
        archive = adapter_archive(
            peft_lm, "tiny", parent.metrics, PROVENANCE, base_model_source="path:/t", forgetting=MISSED, curves=[]
        )
    return archived_weights(archive)


@pytest.fixture(scope="module")
def child(tiny_base: LoadedLM, parent_weights) -> ForgetOutcome:
    stacked = ParentAdapter(parent_weights, {"parent-set": (FORGET_TRAIN, FORGET_HELDOUT)})
    return _run(tiny_base, CHILD_TRAIN, CHILD_HELDOUT, stacked, max_steps=2)


def _value(outcome: ForgetOutcome, stage: str, split: str, name: str) -> float:
    [value] = [m.value for m in outcome.metrics if (m.stage, m.split, m.name, m.layer) == (stage, split, name, None)]
    return value


def test_the_archive_gives_back_the_parent_weights_under_their_run_names(parent, parent_weights) -> None:
    trained = parent.adapter.state
    assert parent_weights.keys() == trained.keys()
    assert all(torch.equal(parent_weights[name], tensor) for name, tensor in trained.items())


def test_the_child_starts_from_the_parent_adapter(parent, child, parent_weights) -> None:
    assert child.before_forgetting.keys() == parent_weights.keys()
    assert all(torch.equal(child.before_forgetting[n], t) for n, t in parent_weights.items())
    # Before forgetting, the child is the parent: its scores of the parent's forget rows are the parent's after
    # forgetting, on the same rows.
    for parent_split, child_split in zip(("forget_train", "forget_heldout"), PARENT_SPLITS, strict=True):
        for name in ("accuracy", "correct_probability"):
            expected = _value(parent, "forgotten", parent_split, name)
            assert _value(child, PARENT_STAGE, child_split, name) == pytest.approx(expected, abs=1e-6)
    # ... and not the base LM, which the parent's forgetting changed.
    before, base = (_value(child, s, PARENT_SPLITS[0], "correct_probability") for s in (PARENT_STAGE, "base"))
    assert abs(before - base) > 1e-4


def test_the_child_reports_the_parent_forget_splits_at_every_stage(child) -> None:
    for stage in ("base", PARENT_STAGE, "forgotten"):
        assert {m.split for m in child.metrics if m.stage == stage} >= {"forget_train", *PARENT_SPLITS}
    assert {p.split for p in child.curves} >= set(PARENT_SPLITS)  # tracked while forgetting too
    rows = {PARENT_SPLITS[0]: len(FORGET_TRAIN), PARENT_SPLITS[1]: len(FORGET_HELDOUT)}
    for split, n in rows.items():
        [accuracy] = [m for m in child.metrics if (m.stage, m.split, m.name) == ("forgotten", split, "accuracy")]
        assert accuracy.n == n and accuracy.ci_low is not None


def test_a_parent_of_another_rank_is_refused(tiny_base: LoadedLM, parent_weights) -> None:
    stacked = ParentAdapter(parent_weights, {})
    with pytest.raises(ParentMismatch, match="needs the parent's LoRA rank"):
        _run(tiny_base, CHILD_TRAIN, CHILD_HELDOUT, stacked, max_steps=1, lora_rank=4)
    with pytest.raises(ParentMismatch, match="needs the parent's LoRA layers"):
        _run(tiny_base, CHILD_TRAIN, CHILD_HELDOUT, ParentAdapter(dict(list(parent_weights.items())[2:]), {}))
