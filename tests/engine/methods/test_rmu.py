"""RMU: which block it steers (pinned by an independent output_hidden_states pass), its adaptive coefficient, its
loss, training that steers that block's forget activations to c·u and no other, and the down_proj-only variant.

The suite's tiny LM has 2 blocks, and transformers applies the final norm to the last hidden_states entry, so the
block-pinning tests use a 4-block tiny LM taught the same task: block 1's output is hidden_states[2], un-normed,
with a block on either side of it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from lethe.methods import RMUParams
from tests.engine.methods.helpers import (
    LIMIT,
    Task,
    batch_of,
    fresh_peft_lm,
    nll,
    perturb_adapter,
    step_of,
    teach,
    train_method,
)
from worker.engine.methods.losses import retain_batch
from worker.engine.methods.rmu import RMU, random_unit_vector
from worker.engine.training.batches import Batch
from worker.engine.training.objective import TrainContext

DEEP_LAYERS = 4


@pytest.fixture(scope="module")
def deep(task: Task) -> Task:
    """The task on a 4-block tiny LM (same tokenizer and rows), fully taught."""
    config = copy.deepcopy(task.lm.config)
    config.num_hidden_layers = DEEP_LAYERS
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = LlamaForCausalLM(config)
    rows = [*task.forget, *task.retain]
    return Task(teach(lm, task.tokenizer, rows, steps=80), task.tokenizer, task.forget, task.retain)


def prepared(task: Task, params: RMUParams, peft_lm=None) -> RMU:
    objective = RMU(params, seed=0)
    lm = peft_lm if peft_lm is not None else fresh_peft_lm(task)
    objective.prepare(TrainContext(lm, task.tokenizer, task.forget, task.retain, LIMIT, 0))
    return objective


def hidden_states(lm, batch: Batch) -> tuple[torch.Tensor, ...]:
    """transformers' own per-block outputs (hidden_states[l + 1] = block l's), no hooks involved, with the batch's
    inputs as training passes them (left padding: each row's positions count from its first real token)."""
    with torch.no_grad():
        return lm(**batch.lm_inputs(), output_hidden_states=True).hidden_states


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Per token mean over the d entries of (hidden − target)², averaged over each row's real tokens, then rows."""
    per_token = ((hidden - target) ** 2).mean(-1)
    return float(((per_token * mask).sum(-1) / mask.sum(-1)).mean())


def mean_norm(hidden: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over rows of the mean token norm over each row's real tokens."""
    return float(((hidden.norm(dim=-1) * mask).sum(-1) / mask.sum(-1)).mean())


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_the_hidden_state_at_layer_l_is_hidden_states_l_plus_1(deep: Task, layer: int) -> None:
    peft_lm = fresh_peft_lm(deep)
    objective = prepared(deep, RMUParams.model_validate({"layer": layer}), peft_lm)
    step = step_of(deep, peft_lm, deep.forget[:4])
    with torch.no_grad():
        captured = objective.activations(step.outputs, step.forget)
    assert torch.equal(captured, hidden_states(peft_lm, step.forget)[layer + 1])


def test_the_forget_loss_is_the_distance_to_c_u_at_the_steered_block_and_no_other(deep: Task) -> None:
    peft_lm = fresh_peft_lm(deep)
    perturb_adapter(peft_lm)  # not at init: the adapter changes every block's output
    params = RMUParams.model_validate({"layer": 1, "steering_coefficient": 3.0, "alpha": 10.0})
    objective = prepared(deep, params, peft_lm)
    step = step_of(deep, peft_lm, deep.forget[:8], deep.retain[:8])
    with torch.no_grad():
        terms = objective.losses(step)
    control = 3.0 * random_unit_vector(deep.lm.config.hidden_size, seed=0)
    mask = step.forget.attention_mask
    states = hidden_states(peft_lm, step.forget)
    by_block = [masked_mse(states[block + 1], control, mask) for block in range(DEEP_LAYERS - 1)]
    assert float(terms.forget) == pytest.approx(by_block[1], rel=1e-5)
    # The loss could not equally be block 0's or block 2's: their distances to c·u differ from block 1's.
    for other in (0, 2):
        assert abs(by_block[other] - by_block[1]) > 0.05 * by_block[1]
    # Retain: alpha * the same distance between the trained LM's and the reference's block-1 outputs.
    retain = retain_batch(step)
    with torch.no_grad():
        reference = step.reference_outputs(retain, output_hidden_states=True).hidden_states[2]
    expected_retain = 10.0 * masked_mse(hidden_states(peft_lm, retain)[2], reference, retain.attention_mask)
    assert expected_retain > 0
    assert terms.retain is not None and float(terms.retain) == pytest.approx(expected_retain, rel=1e-5)


def test_only_the_steered_block_s_output_enters_the_forget_loss(deep: Task) -> None:
    """With adapters on every block (RMU itself never adapts blocks after `layer`), the forget loss of layer 1 has
    gradients on the adapters of blocks 0 and 1 and none on those of blocks 2 and 3, which come after it."""
    peft_lm = fresh_peft_lm(deep)
    objective = prepared(deep, RMUParams.model_validate({"layer": 1, "alpha": 0}), peft_lm)
    step = step_of(deep, peft_lm, deep.forget[:8])
    objective.losses(step).forget.backward()
    gradient_by_block = [0.0] * DEEP_LAYERS
    for name, parameter in peft_lm.named_parameters():
        if "lora_B" in name and parameter.grad is not None:
            gradient_by_block[int(name.split(".layers.")[1].split(".")[0])] += float(parameter.grad.abs().sum())
    assert gradient_by_block[0] > 0 and gradient_by_block[1] > 0
    assert gradient_by_block[2] == 0 and gradient_by_block[3] == 0


def test_at_init_the_retain_loss_is_0(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    params = RMUParams.model_validate({"layer": 0, "steering_coefficient": 3.0, "alpha": 10.0})
    objective = prepared(task, params, peft_lm)
    step = step_of(task, peft_lm, task.forget[:4], task.retain[:4])
    with torch.no_grad():
        terms = objective.losses(step)
    assert terms.retain is not None and float(terms.retain) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("layer", [1, 2])
def test_the_adaptive_coefficient_is_beta_times_the_mean_norm_at_the_steered_block(deep: Task, layer: int) -> None:
    peft_lm = fresh_peft_lm(deep)
    perturb_adapter(peft_lm)  # the LM before forgetting is the one with its adapter (e.g. after a fine-tune)
    forget = batch_of(deep.tokenizer, deep.forget)
    mask = forget.attention_mask
    states = hidden_states(peft_lm, forget)
    norm = mean_norm(states[layer + 1], mask)
    # The blocks' norms differ (so the test tells them apart), and the adapter's LM is the one measured.
    assert abs(mean_norm(states[2], mask) - mean_norm(states[3], mask)) > 0.05 * norm
    assert abs(mean_norm(hidden_states(deep.lm, forget)[layer + 1], mask) - norm) > 0.01 * norm

    objective = prepared(deep, RMUParams.model_validate({"layer": layer, "steering_scale": 2.0}), peft_lm)
    assert objective.coefficient == pytest.approx(2.0 * norm, rel=1e-5)
    assert float(objective.control.norm()) == pytest.approx(2.0 * norm, rel=1e-5)
    doubled = prepared(deep, RMUParams.model_validate({"layer": layer, "steering_scale": 4.0}), peft_lm)
    assert doubled.coefficient == pytest.approx(2 * objective.coefficient, rel=1e-6)
    fixed = prepared(deep, RMUParams.model_validate({"layer": layer, "steering_coefficient": 6.5}), peft_lm)
    assert fixed.coefficient == 6.5


def test_the_coefficient_scales_with_the_lm_s_hidden_state_norm(deep: Task) -> None:
    """Scaling the embeddings and every block's output projections (o_proj, down_proj) by 3 scales the residual
    stream by exactly 3 (each block's RMSNorm input is scale-free, its update 3 times larger): the adaptive c
    triples, as the activations it must misdirect did."""
    scaled = copy.deepcopy(deep.lm)
    with torch.no_grad():
        scaled.get_input_embeddings().weight.mul_(3.0)
        for block in scaled.model.layers:
            block.self_attn.o_proj.weight.mul_(3.0)
            block.mlp.down_proj.weight.mul_(3.0)
    forget = batch_of(deep.tokenizer, deep.forget)
    plain_norm = mean_norm(hidden_states(deep.lm, forget)[2], forget.attention_mask)
    assert mean_norm(hidden_states(scaled, forget)[2], forget.attention_mask) == pytest.approx(3 * plain_norm, rel=1e-3)
    params = RMUParams.model_validate({"layer": 1})
    plain = prepared(deep, params).coefficient
    tripled = prepared(Task(scaled, deep.tokenizer, deep.forget, deep.retain), params).coefficient
    assert plain == pytest.approx(params.steering_scale * plain_norm, rel=1e-5)
    assert tripled == pytest.approx(3 * plain, rel=1e-3)


def test_training_steers_the_layer_s_forget_activations_only_and_keeps_retain_ones(deep: Task) -> None:
    # Only block 1 adapted: whatever moves block 0's or block 2's output towards c·u can only come from block 1.
    params = {"layer": 1, "trained_layers": [1], "steering_coefficient": 6.5, "alpha": 1200}
    control = 6.5 * random_unit_vector(deep.lm.config.hidden_size, seed=0)
    forget = batch_of(deep.tokenizer, deep.forget)

    def distances_to_control(lm) -> list[float]:
        states = hidden_states(lm, forget)
        return [masked_mse(states[block + 1], control, forget.attention_mask) for block in range(DEEP_LAYERS - 1)]

    def retain_drift(lm) -> float:
        retain = batch_of(deep.tokenizer, deep.retain)
        return masked_mse(hidden_states(lm, retain)[2], hidden_states(deep.lm, retain)[2], retain.attention_mask)

    before = distances_to_control(deep.lm)
    steered = train_method(deep, "rmu", params, steps=32)
    after = distances_to_control(steered)
    assert after[1] < 0.6 * before[1]
    assert after[0] == pytest.approx(before[0], rel=1e-6)  # no adapter before block 1: block 0 is untouched
    # Misdirected activations break the forget targets' predictions.
    assert nll(steered, forget) > nll(deep.lm, forget) + 1.0
    # The retain term holds retain activations where they were; without it they drift.
    unheld = train_method(deep, "rmu", {**params, "alpha": 0}, steps=32)
    assert retain_drift(steered) < 0.01 * retain_drift(unheld)


def test_only_the_trained_layers_get_adapters(task: Task) -> None:
    peft_lm = train_method(task, "rmu", {"layer": 0}, steps=1)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in peft_lm.named_parameters() if "lora_" in name}
    assert adapted == {"0"}


@pytest.mark.parametrize(("modules", "changed"), [("down_proj", {"down_proj"}), ("all", None)])
def test_the_down_proj_variant_trains_only_the_down_proj_adapters(
    deep: Task, modules: str, changed: set[str] | None
) -> None:
    params = {"layer": 1, "trained_modules": modules, "alpha": 0}
    initial = {n: p.detach().clone() for n, p in fresh_peft_lm(deep, [0, 1]).named_parameters() if "lora_" in n}
    trained = train_method(deep, "rmu", params, steps=4)
    moved = {
        name.split(".lora_")[0].rsplit(".", 1)[-1]
        for name, parameter in trained.named_parameters()
        if "lora_" in name and not torch.equal(parameter, initial[name])
    }
    every_module = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert moved == (changed if changed is not None else every_module)
    if modules == "down_proj":
        assert {n for n, p in trained.named_parameters() if p.requires_grad} == {
            n for n in initial if ".down_proj.lora_" in n
        }
