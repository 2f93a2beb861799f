"""An LM dispatched by accelerate, as a worker spreads one over GPUs (LETHE_WORKER_GPUS > 1): scoring, generation
and LoRA training (with a reference LM, and with a method that steers a block's activations) through its hooks.

On the CPU every part stays on the CPU (on a GPU machine, on `cuda:0`): accelerate's hooks are forced onto each
block (as a spread LM has them), but nothing moves between devices. That shows the engine runs a dispatched LM
and gets the plain LM's results; it cannot show that tensors on different devices meet correctly, which no
CPU-only machine can. That is the `gpu` test at the end: the worker's own loader spreads the tiny LM over two
GPUs (the embeddings on one, the head on the other) and it must score and train as the LM on one GPU does. It
needs two GPUs and is skipped otherwise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model
from transformers import PreTrainedModel

from lethe.methods import METHODS
from lethe.rows import ChoiceRow, QARow
from tests.tiny_lm import synthetic_choice_rows, synthetic_qa_rows
from worker.engine.lm.inputs import encode_pair
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import attach_lora, lora_state
from worker.engine.lm.placement import input_device
from worker.engine.methods.implementations import build_objective
from worker.engine.methods.plugins import build_plugins
from worker.engine.metrics.choice_scores import score_choices
from worker.engine.metrics.generation import generate_greedy
from worker.engine.metrics.token_scores import score_tokens
from worker.engine.training.loop import Schedule, train

CHOICE_ROWS = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(8, seed=0)]
QA_ROWS = [QARow.from_dict(row) for row in synthetic_qa_rows(8, seed=1)]


@dataclass
class Run:
    """What the engine computed on an LM: choice and token scores, greedy text, and adapters after training."""

    choices: list[list[float]]
    tokens: list[list[float]]
    generated: list[str]
    adapters: dict[str, dict[str, torch.Tensor]]


# What adds tensors from several parameters or layers, which an LM spread over GPUs holds on several devices: a
# reference LM and the projection of the forget gradient (npo), a block's activations (rmu), generated texts and
# Fisher-weighted confidences (lwf).
METHODS_RUN: dict[str, dict] = {
    "npo": {"retain_kl_weight": 1.0, "project_gradients": True},
    "rmu": {},
    "lwf": {"max_new_tokens": 4, "interval": 1},
}


def run_engine(base: LoadedLM) -> Run:
    """Score, generate, then train a fresh adapter 2 steps with each of METHODS_RUN."""
    tokenizer = base.tokenizer
    pairs = [encode_pair(tokenizer, row.question, " " + row.answer) for row in QA_ROWS]
    choices = score_choices(base.lm, tokenizer, CHOICE_ROWS, batch_size=8).loglikelihoods
    tokens = [s.log_probs.tolist() for s in score_tokens(base.lm, tokenizer, pairs, batch_size=4)]
    generated = generate_greedy(base.lm, tokenizer, [context for context, _ in pairs[:4]], 4, batch_size=4)
    adapters = {}
    for method, params in METHODS_RUN.items():
        parsed = METHODS.get(method).parse({"learning_rate": 1e-2, **params})
        torch.manual_seed(0)
        peft_lm = attach_lora(base.lm, rank=4, alpha=8, layers=parsed.adapted_layers(base.lm.config.num_hidden_layers))
        train(
            peft_lm,
            tokenizer,
            build_objective(method, parsed, 0),
            CHOICE_ROWS,
            QA_ROWS,
            Schedule(learning_rate=1e-2, epochs=10, batch_size=4, max_steps=2),
            seed=0,
            limit=64,
            plugins=build_plugins(parsed),
        )
        adapters[method] = {name: t.float().cpu() for name, t in lora_state(peft_lm).items()}
        peft_lm.unload()  # the base LM without its LoRA layers again, for the next method
    return Run(choices, tokens, generated, adapters)


def assert_same_run(run: Run, reference: Run, tolerance: float) -> None:
    torch.testing.assert_close(torch.tensor(run.choices), torch.tensor(reference.choices), atol=tolerance, rtol=0)
    for scores, expected in zip(run.tokens, reference.tokens, strict=True):
        torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), atol=tolerance, rtol=0)
    assert run.generated == reference.generated
    for method, adapter in reference.adapters.items():
        assert run.adapters[method].keys() == adapter.keys()
        for name, weights in adapter.items():
            torch.testing.assert_close(run.adapters[method][name], weights, atol=tolerance, rtol=0)
        # The runs trained: some B matrix (zero at initialisation) moved.
        assert any(w.abs().max() > 0 for name, w in adapter.items() if "lora_B" in name), method


def per_block_device_map(lm: PreTrainedModel, device: str | int) -> dict[str, str | int]:
    """Every top-level part of the decoder on `device`, a hook on each: the shape of a spread LM's map."""
    layers = [f"model.layers.{i}" for i in range(lm.config.num_hidden_layers)]
    return {name: device for name in ["model.embed_tokens", *layers, "model.norm", "model.rotary_emb", "lm_head"]}


def test_a_dispatched_lm_gives_the_plain_lms_results(tiny_base: LoadedLM) -> None:
    """On the device the worker loads LMs on: the CPU here, `cuda:0` on a GPU machine."""
    plain = LoadedLM(copy.deepcopy(tiny_base.lm), tiny_base.tokenizer, "tiny", tiny_base.device)
    lm = copy.deepcopy(tiny_base.lm)
    device = "cpu" if tiny_base.device.type == "cpu" else tiny_base.device.index or 0
    dispatched_lm = dispatch_model(lm, per_block_device_map(lm, device), force_hooks=True)
    assert hasattr(dispatched_lm.model.layers[0], "_hf_hook") and hasattr(dispatched_lm.lm_head, "_hf_hook")
    dispatched = LoadedLM(dispatched_lm, tiny_base.tokenizer, "tiny", input_device(dispatched_lm))
    # bf16 on a GPU: the same kernels, but a GPU need not reduce in the same order twice.
    assert_same_run(run_engine(dispatched), run_engine(plain), tolerance=1e-6 if device == "cpu" else 2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="spreads an LM over two GPUs")
def test_an_lm_spread_over_two_gpus_gives_the_one_gpu_results(
    tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LETHE_WORKER_GPUS", "1")
    single = load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path)
    monkeypatch.setenv("LETHE_WORKER_GPUS", "2")
    spread = load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path)
    assert set(spread.lm.hf_device_map.values()) == {0, 1}
    assert spread.device == torch.device("cuda", 0)
    assert spread.lm.get_output_embeddings().weight.device == torch.device("cuda", 1)  # the head on the other
    # bf16 weights on both: the same kernels on the same kind of GPU, up to the order of reductions.
    assert_same_run(run_engine(spread), run_engine(single), tolerance=2e-2)
