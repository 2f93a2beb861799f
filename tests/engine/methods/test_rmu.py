"""RMU: the hidden state it reads, its loss at init, and training that steers forget activations to c·u."""

import pytest
import torch

from lethe.methods import RMUParams
from tests.engine.methods.helpers import LIMIT, Task, batch_of, fresh_peft_lm, nll, step_of, train_method
from worker.engine.methods.losses import activation_distance, retain_batch
from worker.engine.methods.rmu import RMU, random_unit_vector
from worker.engine.training.objective import TrainContext


def prepared(task: Task, params: RMUParams, peft_lm=None) -> RMU:
    objective = RMU(params, seed=0)
    lm = peft_lm if peft_lm is not None else fresh_peft_lm(task)
    objective.prepare(TrainContext(lm, task.tokenizer, task.forget, task.retain, LIMIT, 0))
    return objective


def test_the_hidden_state_at_layer_l_is_hidden_states_l_plus_1(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    objective = prepared(task, RMUParams.model_validate({"layer": 0}), peft_lm)
    step = step_of(task, peft_lm, task.forget[:4])
    with torch.no_grad():
        hidden_states = step.outputs(step.forget, output_hidden_states=True).hidden_states
        assert torch.equal(objective.activations(step.outputs, step.forget), hidden_states[1])


def test_at_init_the_retain_loss_is_0_and_the_forget_loss_the_distance_to_c_u(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    params = RMUParams.model_validate({"layer": 0, "steering_coefficient": 3.0, "alpha": 10.0})
    objective = prepared(task, params, peft_lm)
    step = step_of(task, peft_lm, task.forget[:4], task.retain[:4])
    with torch.no_grad():
        terms = objective.losses(step)
    assert terms.retain is not None and float(terms.retain) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        hidden = step.outputs(step.forget, output_hidden_states=True).hidden_states[1]
    control = 3.0 * random_unit_vector(task.lm.config.hidden_size, seed=0)
    mask = step.forget.attention_mask
    per_token = ((hidden - control) ** 2).mean(-1)
    expected = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    assert float(terms.forget) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms.forget) == pytest.approx(float(activation_distance(hidden, control, mask)), rel=1e-6)


def test_training_steers_forget_activations_and_keeps_retain_ones(task: Task) -> None:
    params = {"layer": 1, "steering_coefficient": 6.5, "alpha": 1200}
    layers = RMUParams.model_validate(params).adapted_layers(task.lm.config.num_hidden_layers)
    assert layers == [0, 1]

    def distances(lm) -> tuple[float, float]:
        """(forget activations' distance to c·u, retain activations' distance to the reference's)."""
        objective = prepared(task, RMUParams.model_validate(params), lm)
        step = step_of(task, lm, task.forget, task.retain)
        with torch.no_grad():
            forget = objective.activations(step.outputs, step.forget)
            retain = retain_batch(step)
            retain_now = objective.activations(step.outputs, retain)
            retain_before = objective.activations(step.reference_outputs, retain)
        return (
            float(activation_distance(forget, objective.control, step.forget.attention_mask)),
            float(activation_distance(retain_now, retain_before, retain.attention_mask)),
        )

    forget_before, _ = distances(fresh_peft_lm(task))
    steered = train_method(task, "rmu", params, steps=32)
    forget_after, retain_drift = distances(steered)
    assert forget_after < 0.6 * forget_before
    # Misdirected activations break the forget targets' predictions.
    forget = batch_of(task.tokenizer, task.forget)
    assert nll(steered, forget) > nll(task.lm, forget) + 1.0
    # The retain term holds retain activations where they were; without it they drift.
    _, unheld_drift = distances(train_method(task, "rmu", {**params, "alpha": 0}, steps=32))
    assert retain_drift < 0.01 * unheld_drift


def test_only_the_trained_layers_get_adapters(task: Task) -> None:
    peft_lm = train_method(task, "rmu", {"layer": 0}, steps=1)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in peft_lm.named_parameters() if "lora_" in name}
    assert adapted == {"0"}
