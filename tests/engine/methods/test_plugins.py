"""The plug-ins: retain-KL is 0 at init, projection leaves the forget gradient orthogonal to the retain gradient,
RNA perturbs the trained LM's retain forwards only."""

import contextlib
from collections.abc import Iterator

import pytest
import torch

from lethe.methods import GradDiffParams, GradientAscentParams
from tests.engine.methods.helpers import LIMIT, Task, fresh_peft_lm, perturb_adapter, step_of
from worker.engine.lm.blocks import block_outputs, decoder_block
from worker.engine.methods.grad_diff import GradDiff
from worker.engine.methods.losses import retain_batch
from worker.engine.methods.plugins import BlockNoise, build_plugins, project_out_retain
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Plugins, Step


def test_retain_kl_is_0_at_init_and_positive_once_the_adapter_moves(task: Task) -> None:
    [term] = build_plugins(GradientAscentParams.model_validate({"retain_kl_weight": 2.0})).retain_terms
    peft_lm = fresh_peft_lm(task)
    step = step_of(task, peft_lm, task.forget[:4], task.retain[:4])
    with torch.no_grad():
        assert float(term(step)) == pytest.approx(0.0, abs=1e-7)
        perturb_adapter(peft_lm)
        assert float(term(step)) > 1e-3


def test_projection_of_the_lms_gradients_is_orthogonal_to_the_retain_gradient(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    perturb_adapter(peft_lm)  # so that every LoRA matrix has a gradient
    trainable = [p for p in peft_lm.parameters() if p.requires_grad]
    terms = GradDiff(GradDiffParams.model_validate({})).losses(step_of(task, peft_lm, task.forget[:8], task.retain[:8]))
    assert terms.retain is not None
    retain = list(torch.autograd.grad(terms.retain, trainable, retain_graph=True))
    forget = list(torch.autograd.grad(terms.forget, trainable))
    projected = project_out_retain(forget, retain)

    def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))

    assert abs(dot(forget, retain)) > 1e-3  # there was something to remove
    assert abs(dot(projected, retain)) < 1e-6 * dot(forget, forget) ** 0.5 * dot(retain, retain) ** 0.5
    # Only the component along the retain gradient went: the rest is unchanged.
    removed = [f - p for f, p in zip(forget, projected, strict=True)]
    assert dot(removed, retain) == pytest.approx(dot(forget, retain), rel=1e-6)


def test_rna_changes_the_trained_lms_retain_forwards_only(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    [noise] = build_plugins(
        GradientAscentParams.model_validate({"retain_kl_weight": 1, "rna_noise_std": 0.5, "rna_layer": 0})
    ).retain_hooks
    clean = step_of(task, peft_lm, task.forget[:4], task.retain[:4])
    noisy = Step(peft_lm, clean.forget, clean.retain, 0, 0, retain_hooks=[noise])
    retain = retain_batch(clean)
    with torch.no_grad():
        clean_retain = clean.target_logits(retain).logits
        assert torch.equal(noisy.target_logits(noisy.forget).logits, clean.target_logits(clean.forget).logits)
        assert not torch.allclose(noisy.target_logits(retain).logits, clean_retain, atol=1e-3)
        assert not torch.allclose(noisy.outputs(retain).logits, clean.outputs(retain).logits, atol=1e-3)
        assert torch.equal(noisy.reference_outputs(retain).logits, clean.reference_outputs(retain).logits)
        # The hook is removed on leaving the forward: the LM itself is unchanged.
        assert torch.equal(clean.target_logits(retain).logits, clean_retain)


def test_rna_noise_has_the_requested_scale_at_the_requested_block(task: Task) -> None:
    peft_lm = fresh_peft_lm(task)
    batch = step_of(task, peft_lm, task.retain[:4]).forget

    def block_0_output(noise: contextlib.AbstractContextManager) -> torch.Tensor:
        # Registered after the noise hook, so it sees the block's output as the next block does.
        with torch.no_grad(), noise, block_outputs(decoder_block(peft_lm, 0)) as captured:
            peft_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return captured[0]

    clean = block_0_output(contextlib.nullcontext())
    noisy = block_0_output(BlockNoise(std=0.25, layer=0)(peft_lm))
    assert float((noisy - clean).std()) == pytest.approx(0.25, rel=0.1)
    assert float((noisy - clean).mean()) == pytest.approx(0.0, abs=0.05)


def test_training_runs_the_retain_hooks_on_retain_batches(task: Task) -> None:
    seen: list[int] = []

    @contextlib.contextmanager
    def count(lm) -> Iterator[None]:
        seen.append(1)
        yield

    train(
        fresh_peft_lm(task),
        task.tokenizer,
        GradDiff(GradDiffParams.model_validate({})),
        task.forget,
        task.retain,
        Schedule(learning_rate=1e-3, epochs=1, batch_size=8),
        seed=0,
        limit=LIMIT,
        plugins=Plugins(retain_hooks=[count]),
    )
    assert len(seen) == 2  # one retain forward in each of the 2 steps
