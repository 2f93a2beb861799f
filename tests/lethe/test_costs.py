"""A job's estimated cost against hand computations (lethe/costs.py's docstrings give the formulas)."""

import uuid
from typing import Any

import pytest

from lethe.attacks import Thresholds
from lethe.costs import CostEstimate, audit_cost, forget_request_cost
from lethe.specs import AttackChoice, AuditSpec, FinetuneSpec, ForgetJobSpec, MethodChoice


def spec(
    method: str,
    params: dict[str, Any],
    heldout_fraction: float = 0.2,
    finetune_epochs: int | None = None,
    audit: AuditSpec | None = None,
) -> ForgetJobSpec:
    return ForgetJobSpec(
        base_model="tiny",
        base_model_source="bundled:tiny",
        forget_dataset=uuid.uuid4(),
        retain_datasets=[],
        heldout_fraction=heldout_fraction,
        finetune=FinetuneSpec(epochs=finetune_epochs, learning_rate=1e-3) if finetune_epochs else None,
        method=MethodChoice(name=method, params=params),
        probe=False,
        general_text_perplexity=False,
        seed=0,
        audit=audit,
    )


def relearn_audit(**params: Any) -> AuditSpec:
    return AuditSpec(attacks=[AttackChoice(name="relearn", params=params)], thresholds=Thresholds.model_validate({}))


def test_gradient_ascent_with_a_finetune() -> None:
    # 100 rows, 20 held out: n = 80. Fine-tune 2 epochs: 160. Forget 5 epochs: 400, in 5 * ceil(80 / 8) = 50
    # steps. No retain term. Evaluations: before, after the fine-tune, after forgetting, and 50 / 10 = 5 checks
    # (one per epoch): 8 * 100 rows / 3.
    estimate = forget_request_cost(spec("gradient_ascent", {"epochs": 5, "batch_size": 8}, 0.2, 2), 100, 0)
    assert estimate.terms == pytest.approx(
        {"finetune": 160, "forget": 400, "retain": 0, "preparation": 0, "evaluation": 800 / 3}
    )
    assert estimate.total == pytest.approx(160 + 400 + 800 / 3)


def test_grad_diff_bounded_by_max_steps() -> None:
    # 50 rows, 10 held out: n = 40; batch 16: 3 steps an epoch, 3 epochs = 9 steps, capped at max_steps 5.
    # Forget: min(3 * 40, 5 * 16) = 80. Retain: 5 steps * min(16, 30 retain rows) = 80. Evaluations: before,
    # after, and ceil(5 / 3) = 2 epoch checks: 4 * (50 + 30) / 3.
    params = {"epochs": 3, "batch_size": 16, "max_steps": 5}
    estimate = forget_request_cost(spec("grad_diff", params), 50, 30)
    assert estimate.terms == pytest.approx(
        {"finetune": 0, "forget": 80, "retain": 80, "preparation": 0, "evaluation": 320 / 3}
    )


def test_lwf_passes_over_the_learning_data_and_counts_its_unlearning_steps() -> None:
    # 40 rows, 10 held out: n = 30; top_fraction 0.5: 15 texts. An epoch passes over the 200 retain rows: 25 steps
    # of 8, 2 epochs = 50 learning steps, and an unlearning step after every 3rd but the last: 49 // 3 = 16.
    # Forget: 16 * min(8, 15) = 128. Retain: 2 * 200 = 400 learning rows, plus the Fisher's 128 rows: 528.
    # Preparation: a generation and a gradient per forget-train row: 60. Evaluations: before, after, and
    # 66 // 2 = 33 checks: 35 * (40 + 200) / 3 = 2800.
    params = {"epochs": 2, "batch_size": 8, "top_fraction": 0.5, "interval": 3, "evaluate_every": 2}
    estimate = forget_request_cost(spec("lwf", params, 0.25), 40, 200)
    assert estimate.terms == pytest.approx(
        {"finetune": 0, "forget": 128, "retain": 528, "preparation": 60, "evaluation": 2800}
    )
    assert estimate.total == pytest.approx(3516)

    # max_steps 10 cuts it short: steps 3, 7 unlearn (10 // 4 = 2): forget 16; 8 learning steps of 8 rows: 64 +
    # 128; evaluations every epoch of 66 / 2 = 33 steps: ceil(10 / 33) = 1 check, (2 + 1) * 80 = 240.
    estimate = forget_request_cost(spec("lwf", params | {"max_steps": 10, "evaluate_every": None}, 0.25), 40, 200)
    assert estimate.terms == pytest.approx(
        {"finetune": 0, "forget": 16, "retain": 192, "preparation": 60, "evaluation": 240}
    )


def test_relearn_audit() -> None:
    # Forget job: 40 rows, 10 held out (h = 10), n = 30, batch 8. Sizes min(k, 30): 2, 8, 30. Relearn: 10 steps *
    # (2 + 8 + min(30, 8)) = 180, benign: 10 * min(30, 5 retain rows, 8) = 50. Four curves evaluated at steps
    # 0, 5, 10: 4 * 3 * 10 / 3 = 40.
    forget_spec = spec("gradient_ascent", {"batch_size": 8}, 0.25)
    audit = relearn_audit(examples=[2, 8, 50], steps=10, evaluate_every=5, benign=True)
    estimate = audit_cost(audit, forget_spec, 40, 5)
    assert estimate.terms == pytest.approx({"relearn": 230, "relearn_evaluation": 40})


def test_an_audit_without_relearning_costs_nothing_trained() -> None:
    audit = AuditSpec(attacks=[AttackChoice(name="quantize", params={})], thresholds=Thresholds.model_validate({}))
    assert audit_cost(audit, spec("gradient_ascent", {}), 40, 0).total == 0


def test_a_requested_audit_adds_to_the_forget_request() -> None:
    audit = relearn_audit(examples=[2], steps=10, evaluate_every=5, benign=False)
    without = forget_request_cost(spec("gradient_ascent", {"batch_size": 8}, 0.25), 40, 0)
    with_audit = forget_request_cost(spec("gradient_ascent", {"batch_size": 8}, 0.25, audit=audit), 40, 0)
    # 10 steps * 2 rows, and one curve scored 3 times on 10 heldout rows.
    assert with_audit.terms["audit"] == pytest.approx(20 + 10)
    assert with_audit.total == pytest.approx(without.total + 30)


def test_describe_names_the_total_and_its_terms() -> None:
    estimate = CostEstimate({"forget": 1200.0, "retain": 0.0, "evaluation": 33.4})
    assert estimate.describe() == "1,233 example-passes (forget 1,200 + evaluation 33)"
