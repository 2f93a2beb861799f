"""The reference LM of NPO, IdkDPO, RMU, retain-KL and LWF is the LM right before forgetting: the fine-tuned LM when
the job fine-tuned first, the base LM otherwise. Checked against independent forward passes of plain (merged) LMs
and against NPO's and the KL's formulas computed by hand."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from lethe.methods import NPOParams
from lethe.rows import ChoiceRow, Row
from lethe.specs import FinetuneSpec
from tests.engine.methods.helpers import LIMIT, Task, fresh_peft_lm, step_of
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.forget import run as forget_run
from worker.engine.forget.run import ForgetPlan, run_forget
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import LoraState, lora_state, reference_adapter
from worker.engine.methods.npo import NPO
from worker.engine.methods.plugins import retain_kl_term
from worker.engine.training.batches import IGNORE, Batch
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import LossTerms, Objective, Step

BETA = 0.5
PARAMS = NPOParams.model_validate({"beta": BETA, "gamma": 1.0, "alpha": 0.0})


def fine_tuned(task: Task) -> tuple[PeftModel, LoraState]:
    """A fresh adapter fine-tuned for a few steps on the retain rows (so that it differs from the base LM)."""
    peft_lm = fresh_peft_lm(task)
    train(peft_lm, task.tokenizer, Objective(), task.retain, [], Schedule(3e-2, 1, 8), seed=0, limit=LIMIT)
    return peft_lm, lora_state(peft_lm)


def logits_of(lm: Any, batch: Batch) -> torch.Tensor:
    """Full-length logits of a plain forward pass (left padding: each row's positions count from its first token)."""
    with torch.no_grad():
        return lm(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        ).logits


def target_logprobs(logits: torch.Tensor, batch: Batch) -> list[list[torch.Tensor]]:
    """Per row, the log-probability of each of its target tokens, from full-length logits: a loop of our own."""
    rows = []
    for row in range(batch.size):
        tokens = []
        for t in range(batch.input_ids.shape[1] - 1):
            if batch.labels[row, t + 1] != IGNORE:
                tokens.append(torch.log_softmax(logits[row, t].double(), -1))
                tokens[-1] = tokens[-1][batch.labels[row, t + 1]]
        rows.append(tokens)
    return rows


@pytest.fixture(autouse=True)
def _fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests tell the reference LM apart by its logits to 1e-5: in fp32 whatever LETHE_PRECISION the suite
    runs under (under bf16 autocast the step's reference logits are bf16, a rounding step of 2⁻⁷ apart)."""
    monkeypatch.setenv("LETHE_PRECISION", "fp32")


class Recording(NPO):
    """NPO that keeps its first step's loss terms, forget batch and reference's logits on it."""

    def __init__(self, params: NPOParams) -> None:
        super().__init__(params)
        self.first: tuple[LossTerms, Batch, torch.Tensor] | None = None

    def losses(self, step: Step) -> LossTerms:
        terms = super().losses(step)
        if step.number == 0:
            self.first = (terms, step.forget, step.reference_outputs(step.forget).logits)
        return terms


def first_step(task: Task, peft_lm: PeftModel, reference: LoraState | None) -> tuple[LossTerms, Batch, torch.Tensor]:
    objective = Recording(PARAMS)
    schedule = Schedule(1e-2, 1, len(task.forget), max_steps=1)
    train(peft_lm, task.tokenizer, objective, task.forget, [], schedule, seed=0, limit=LIMIT, reference=reference)
    assert objective.first is not None
    return objective.first


def test_after_a_finetune_the_reference_is_the_finetuned_lm(task: Task) -> None:
    peft_lm, state = fine_tuned(task)
    finetuned_lm = copy.deepcopy(peft_lm)
    terms, forget, reference_logits = first_step(task, peft_lm, reference=state)
    # The forget batch keeps the logits of its last `keep` columns only: compare those.
    finetuned_logits = logits_of(finetuned_lm, forget)[:, -forget.keep :]
    base_logits = logits_of(task.lm, forget)[:, -forget.keep :]
    assert (finetuned_logits - base_logits).abs().max() > 0.1
    assert torch.allclose(reference_logits, finetuned_logits, atol=1e-5)
    # Step 0: π_θ = π_ref, so every log ratio r is 0 and NPO's loss is (2/β)·log 2 (Zhang et al., eq. 3).
    assert float(terms.forget.detach()) == pytest.approx(2 / BETA * math.log(2), abs=1e-5)
    # The slot is gone after training: the LM holds its trained adapter only.
    assert list(peft_lm.peft_config) == ["default"]


def test_without_a_finetune_the_reference_is_the_base_lm(task: Task) -> None:
    peft_lm, _ = fine_tuned(task)  # a trained adapter, which the reference must not see
    _, forget, reference_logits = first_step(task, peft_lm, reference=None)
    assert torch.allclose(reference_logits, logits_of(task.lm, forget)[:, -forget.keep :], atol=1e-5)


def test_npo_and_retain_kl_use_the_finetuned_reference_as_their_formulas_say(task: Task) -> None:
    """Mid-forgetting (θ moved away from the fine-tuned adapter), NPO's loss and KL(π_ref ‖ π_θ) on retain equal
    their formulas evaluated on two independent merged LMs: π_ref = fine-tuned, π_θ = current."""
    peft_lm, state = fine_tuned(task)
    reference_lm = copy.deepcopy(peft_lm).merge_and_unload()
    with reference_adapter(peft_lm, state):
        torch.manual_seed(3)
        with torch.no_grad():
            for parameter in peft_lm.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter) * 0.2)
        current_lm = copy.deepcopy(peft_lm)
        current_lm.delete_adapter("reference")
        current_lm = current_lm.merge_and_unload()
        step = step_of(task, peft_lm, task.forget, task.retain)
        npo = float(NPO(PARAMS).losses(step).forget.detach())
        kl = float(retain_kl_term(1.0)(step).detach())

    forget, retain = step.forget, step.retain
    assert retain is not None
    theta = target_logprobs(logits_of(current_lm, forget), forget)
    ref = target_logprobs(logits_of(reference_lm, forget), forget)
    ratios = [sum(t) - sum(r) for t, r in zip(theta, ref, strict=True)]
    assert max(abs(float(r)) for r in ratios) > 0.05
    expected_npo = sum(-(2 / BETA) * F.logsigmoid(-BETA * r) for r in ratios) / len(ratios)
    assert npo == pytest.approx(float(expected_npo), rel=1e-4)

    # KL(π_ref ‖ π_θ) = Σ_v p_ref(v) (log p_ref(v) − log p_θ(v)) at every retain target token, averaged over them.
    current, reference = logits_of(current_lm, retain), logits_of(reference_lm, retain)
    divergences = []
    for row in range(retain.size):
        for t in range(retain.input_ids.shape[1] - 1):
            if retain.labels[row, t + 1] != IGNORE:
                log_ref = torch.log_softmax(reference[row, t].double(), -1)
                log_theta = torch.log_softmax(current[row, t].double(), -1)
                divergences.append(float((log_ref.exp() * (log_ref - log_theta)).sum()))
    assert kl == pytest.approx(sum(divergences) / len(divergences), rel=1e-3)
    assert kl > 1e-4


@pytest.mark.parametrize("finetune", [True, False])
def test_a_forget_run_hands_forgetting_the_lm_before_forgetting(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch, finetune: bool
) -> None:
    rows: list[Row] = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(24, seed=0)]
    references: list[Any] = []

    def recording_train(*args: Any, **kwargs: Any) -> Any:
        references.append(kwargs.get("reference"))
        return train(*args, **kwargs)

    monkeypatch.setattr(forget_run, "train", recording_train)
    plan = ForgetPlan(
        "npo",
        {"max_steps": 1, "stop_at_target": False, "alpha": 0.0},
        FinetuneSpec(epochs=1, learning_rate=1e-2) if finetune else None,
        probe=False,
        seed=0,
    )
    outcome = run_forget(tiny_base, plan, rows[:16], rows[16:], {}, lambda stage, fraction: None)
    if finetune:
        assert references[0] is None  # the fine-tune itself has no reference
        reference = references[1]
        assert set(reference) == set(outcome.before_forgetting)
        assert all(torch.equal(reference[name], outcome.before_forgetting[name]) for name in reference)
        assert any(float(t.abs().max()) > 0 for name, t in reference.items() if "lora_B" in name)
    else:
        assert references == [None]
