import pytest
import torch

from bench.naive_peft import naive_gradient_ascent
from bench.peak import matmul_peak_flops
from bench.training_bench import LORA_RANK, lethe_gradient_ascent, model_flops_per_token
from lethe.rows import ChoiceRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM


def test_naive_and_lethe_loops_train_the_same_rows_from_the_same_start(tiny_base: LoadedLM, tiny_lm_dir) -> None:
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(12, seed=3)]
    naive = naive_gradient_ascent(tiny_lm_dir, rows, epochs=2, batch_size=4, learning_rate=1e-2, seed=0)
    lethe = lethe_gradient_ascent(tiny_base, rows, epochs=2, batch_size=4, learning_rate=1e-2, seed=0)
    assert naive.steps == lethe.steps == 6 == len(naive.losses) == len(lethe.losses)
    assert naive.tokens == lethe.tokens > 0 and naive.tokens_per_s > 0
    # The first step sees the same batch and the same LM (LoRA's B starts at zero): the same loss, up to bf16.
    assert lethe.losses[0] == pytest.approx(naive.losses[0], abs=0.05)
    # Gradient ascent: the loss (−NLL) goes down in both.
    assert naive.losses[-1] < naive.losses[0] and lethe.losses[-1] < lethe.losses[0]


def test_model_flops_count_every_linear_weight(tiny_base: LoadedLM) -> None:
    config = tiny_base.lm.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    # q, k, v, o (no grouped heads in the tiny LM) and the three MLP matrices, per layer.
    body = layers * (4 * hidden * hidden + 3 * hidden * inner)
    lora = layers * LORA_RANK * (4 * 2 * hidden + 3 * (hidden + inner))
    head = config.vocab_size * hidden
    assert model_flops_per_token(tiny_base, 0.25) == pytest.approx(4 * body + 0.25 * 4 * head + 6 * lora)


def test_matmul_peak_is_positive() -> None:
    assert matmul_peak_flops(torch.float32, size=64, repeats=2) > 0
