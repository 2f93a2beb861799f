"""The ascent-style methods on the taught tiny LM: they forget, the retain term protects retain, and their losses
compare against the reference = the same LM with its adapter disabled."""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from lethe.methods import METHODS, GradDiffParams, NPOParams, RMUParams, SimNPOParams
from lethe.rows import QARow, Row, TextRow
from tests.engine.methods.helpers import (
    Task,
    batch_of,
    fresh_peft_lm,
    nll,
    perturb_adapter,
    step_of,
    teach,
    train_method,
)
from worker.engine.methods.grad_diff import GradDiff
from worker.engine.methods.implementations import build_objective
from worker.engine.methods.losses import log_ratio, retain_batch
from worker.engine.methods.npo import NPO
from worker.engine.methods.simnpo import SimNPO
from worker.engine.training.logprobs import TargetLogits, sequence_logprob


@pytest.fixture(scope="module")
def ascent_retain_damage(task: Task) -> float:
    """How much plain gradient ascent raises the retain NLL in the budget every method gets below."""
    before = nll(task.lm, batch_of(task.tokenizer, task.retain))
    return nll(train_method(task, "gradient_ascent", {}), batch_of(task.tokenizer, task.retain)) - before


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gradient_ascent", {}),
        ("grad_diff", {}),
        ("grad_diff", {"retain_loss": "kl"}),
        ("npo", {}),
        ("simnpo", {}),
        ("idk", {}),
        ("gradient_ascent", {"retain_kl_weight": 1.0, "project_gradients": True}),
    ],
)
def test_the_forget_targets_nll_rises(task: Task, name: str, params: dict) -> None:
    forget = batch_of(task.tokenizer, task.forget)
    before = nll(task.lm, forget)
    assert before < 0.2
    assert nll(train_method(task, name, params), forget) > before + 2.0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("grad_diff", {}),
        ("grad_diff", {"retain_loss": "kl"}),
        ("npo", {}),
        ("simnpo", {}),
        ("idk", {}),
        ("gradient_ascent", {"retain_kl_weight": 1.0}),
        ("gradient_ascent", {"retain_kl_weight": 1.0, "project_gradients": True}),
        ("npo", {"project_gradients": True}),
    ],
)
def test_a_retain_term_protects_retain_better_than_gradient_ascent(
    task: Task, ascent_retain_damage: float, name: str, params: dict
) -> None:
    retain = batch_of(task.tokenizer, task.retain)
    before = nll(task.lm, retain)
    assert ascent_retain_damage > 5.0
    assert nll(train_method(task, name, params), retain) - before < 0.05 * ascent_retain_damage


def test_npo_loss_at_init_is_2_over_beta_log_2(task: Task) -> None:
    # LoRA's B starts at 0, so π_θ = π_ref and every log-ratio is 0.
    params = NPOParams.model_validate({"beta": 0.25, "alpha": 0})
    with torch.no_grad():
        loss = NPO(params).losses(step_of(task, fresh_peft_lm(task), task.forget[:4]))
    assert loss.retain is None
    assert float(loss.forget) == pytest.approx(params.gamma * 2 / 0.25 * math.log(2), rel=1e-5)


def test_at_small_beta_the_npo_step_is_gradient_ascent_s(task: Task) -> None:
    """NPO's gradient is E[2σ(β·r)·∇ log π_θ(y|x)] (Zhang et al., section 4), which tends to the gradient of
    E[log π_θ(y|x)] as β → 0. Lethe's gradient ascent minimises −NLL per target token, i.e. (n/T)·E[log π_θ(y|x)]
    over n sequences with T target tokens in all, so its gradient times T/n is the limit."""
    peft_lm = fresh_peft_lm(task)
    perturb_adapter(peft_lm)  # π_θ ≠ π_ref, so the weights 2σ(β·r) differ between rows unless β is small
    step = step_of(task, peft_lm, task.forget[:8])
    lora = [p for n, p in peft_lm.named_parameters() if "lora_" in n]

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, lora)])

    ascent = METHODS.get("gradient_ascent")
    ascent_objective = build_objective("gradient_ascent", ascent.parse({}), 0)
    scale = step.forget.target_tokens / step.forget.size
    ascent_grad = scale * gradient(ascent_objective.losses(step).forget)
    assert abs(float(log_ratio(step, step.forget).abs().max())) > 1.0  # the rows' log-ratios are far from 0

    def npo_grad(beta: float) -> torch.Tensor:
        return gradient(NPO(NPOParams.model_validate({"beta": beta, "alpha": 0})).losses(step).forget)

    def relative_error(beta: float) -> float:
        return float((npo_grad(beta) - ascent_grad).norm() / ascent_grad.norm())

    assert relative_error(1e-4) < 1e-3
    # The default β = 0.1 is measurably not gradient ascent (the NPO weights matter), and the gap shrinks with β.
    assert relative_error(1.0) > relative_error(0.1) > relative_error(1e-4)
    assert relative_error(1.0) > 0.05


def test_the_reference_is_the_lm_with_its_adapter_disabled(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    perturb_adapter(peft_lm)
    step = step_of(task, peft_lm, task.forget[:4])
    batch = step.forget
    with torch.no_grad():
        trained = peft_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base = task.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = sequence_logprob(trained, batch.labels)[0] - sequence_logprob(base, batch.labels)[0]
    assert expected.abs().min() > 1e-3  # the adapter does change the LM
    assert torch.allclose(log_ratio(step, batch), expected, atol=1e-4)
    # Leaving the reference re-enables the adapter.
    assert torch.allclose(step.target_logits(batch).logits, TargetLogits.of(trained, batch.labels).logits, atol=1e-5)


def test_simnpo_uses_the_per_token_nll_and_no_reference(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    perturb_adapter(peft_lm)
    step = step_of(task, peft_lm, task.forget[:4])
    params = SimNPOParams.model_validate({"beta": 2.0, "delta": 0.5, "gamma": 1.0, "alpha": 0})
    logprob, n_tokens = step.target_logits(step.forget).sequence_logprob()
    per_token = (-logprob / n_tokens).tolist()
    expected = sum(2 / 2.0 * math.log1p(math.exp(-2.0 * (x - 0.5))) for x in per_token) / len(per_token)
    with torch.no_grad():
        assert float(SimNPO(params).losses(step).forget) == pytest.approx(expected, rel=1e-4)


def test_grad_diff_weights_its_terms_and_drops_the_retain_term_at_alpha_0(task: Task) -> None:
    step = step_of(task, fresh_peft_lm(task), task.forget[:4], task.retain[:4])
    with torch.no_grad():
        terms = GradDiff(GradDiffParams.model_validate({"gamma": 2.0, "alpha": 3.0})).losses(step)
        kl = GradDiff(GradDiffParams.model_validate({"retain_loss": "kl"})).losses(step).retain
    assert terms.retain is not None
    assert float(terms.forget) == pytest.approx(-2.0 * nll(task.lm, step.forget), rel=1e-4)
    assert float(terms.retain) == pytest.approx(3.0 * nll(task.lm, retain_batch(step)), rel=1e-4)
    without = GradDiff(GradDiffParams.model_validate({"alpha": 0}))
    assert not without.uses_retain and without.losses(step).retain is None
    # KL to the reference is 0 at init.
    assert kl is not None and float(kl) == pytest.approx(0.0, abs=1e-6)


def _answer_nll(lm: Any, tokenizer: Any, rows: Sequence[QARow | TextRow]) -> float:
    """Mean per-token NLL of each row's answer (qa: " answer" after "Question: q\nAnswer:"; text: the passage after
    EOS), by a plain forward pass per row; written here, not taken from the trainer's batches."""
    total = 0.0
    for row in rows:
        if isinstance(row, QARow):
            context, target = tokenizer(f"Question: {row.question}\nAnswer:").input_ids, tokenizer(" " + row.answer)
        else:
            context, target = [tokenizer.eos_token_id], tokenizer(row.text)
        ids = torch.tensor([context + target.input_ids])
        with torch.no_grad():
            log_probs = lm(input_ids=ids).logits[0].float().log_softmax(-1)
        positions = range(len(context), ids.shape[1])
        total += -sum(float(log_probs[t - 1, ids[0, t]]) for t in positions) / len(positions)
    return total / len(rows)


def _hidden_states(lm: Any, tokenizer: Any, rows: Sequence[Row], layer: int) -> torch.Tensor:
    """Every token's hidden state after block `layer` (transformers' hidden_states[layer + 1]), rows one by one."""
    texts = [row.context + row.target for row in rows]
    with torch.no_grad():
        states = [lm(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states for t in texts]
    return torch.cat([state[layer + 1][0].float() for state in states])


QA_ROWS = [QARow("What is a pear?", "a fruit")] * 8
TEXT_ROWS = [TextRow("The old pear is a fruit")] * 8


@pytest.fixture(scope="module")
def knows_qa_and_text(task: Task) -> Task:
    """The task's LM also taught the qa and text rows, so that there is something to forget in them."""
    return dataclasses.replace(task, lm=teach(task.lm, task.tokenizer, [*QA_ROWS[:1], *TEXT_ROWS[:1]]))


# Each method's forget objective, measured on the rows it trained on by the test's own forward passes: the
# likelihood-based ones raise the answers' NLL (grad_diff, NPO, SimNPO all push the forget likelihood down; measured
# +0.8 to +5 nats per token in 8 steps); RMU pushes the steered block's output towards c·u (c > 0), so the forget
# tokens' projection on u rises, and they move further than the retain tokens, which its retain term holds.
@pytest.mark.parametrize("kind", ["qa", "text"])
@pytest.mark.parametrize("name", ["grad_diff", "npo", "simnpo", "rmu"])
def test_methods_train_on_qa_and_text_rows(knows_qa_and_text: Task, name: str, kind: str) -> None:
    task = knows_qa_and_text
    assert kind in METHODS.get(name).kinds
    rows: list[QARow | TextRow] = [*QA_ROWS] if kind == "qa" else [*TEXT_ROWS]
    peft_lm = train_method(task, name, {}, rows=rows)
    if name != "rmu":
        before, after = _answer_nll(task.lm, task.tokenizer, rows), _answer_nll(peft_lm, task.tokenizer, rows)
        assert after > before + 0.5, (before, after)
        return
    params = RMUParams.model_validate({})
    layer = params.steered_layer(task.lm.config.num_hidden_layers)
    # u as RMU documents it: uniform [0, 1) entries from the run's seed (0 in train_method), unit length.
    u = torch.rand(task.lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    u = u / u.norm()
    forget_before = _hidden_states(task.lm, task.tokenizer, rows, layer)
    forget_after = _hidden_states(peft_lm, task.tokenizer, rows, layer)
    retain_shift = (
        (
            _hidden_states(peft_lm, task.tokenizer, task.retain, layer)
            - _hidden_states(task.lm, task.tokenizer, task.retain, layer)
        )
        .norm(dim=-1)
        .mean()
    )
    forget_shift = (forget_after - forget_before).norm(dim=-1).mean()
    rise = float((forget_after @ u).mean() - (forget_before @ u).mean())
    # Measured: the projection rises by 0.10 (qa) and 0.04 (text), the forget states move 3-4x as far as the
    # retain states (α = 1200 holds those at the reference's).
    assert rise > 0.02, rise
    assert forget_shift > 2 * retain_shift, (forget_shift, retain_shift)
