"""bench/random_lm.py: random-init LMs of the real configs with a tokenizer built here, and the GPU step's pieces."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from bench.peak import matmul_peak_flops
from bench.random_lm import CONFIGS, TINY, build_random_lm, choice_rows
from bench.training_bench import lethe_gradient_ascent
from worker.engine.lm.load import load_base_lm


def test_tiny_build_keeps_the_real_config_but_the_shrunk_shape(tmp_path: Path) -> None:
    directory = build_random_lm("smollm2-135m", tmp_path / "lm", tiny=True)
    assert (directory / "model.safetensors").is_file()
    real = json.loads((CONFIGS / "smollm2-135m.json").read_text())
    config = AutoConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert config.vocab_size == real["vocab_size"]  # the head keeps its real size
    assert config.hidden_size == TINY["hidden_size"] != real["hidden_size"]
    assert config.tie_word_embeddings is True
    assert len(tokenizer) <= config.vocab_size
    assert config.eos_token_id == tokenizer.eos_token_id and config.pad_token_id == tokenizer.pad_token_id


def test_choice_rows_are_seeded_and_long_as_asked() -> None:
    rows = choice_rows(5, prompt_words=30, seed=3)
    assert rows == choice_rows(5, prompt_words=30, seed=3) != choice_rows(5, prompt_words=30, seed=4)
    assert all(len(row.prompt.split()) == 30 and len(row.choices) == 2 for row in rows)


@pytest.mark.gpu
def test_lethe_training_and_the_peak_run_on_cuda(tmp_path: Path) -> None:
    directory = build_random_lm("smollm2-135m", tmp_path / "lm", tiny=True)
    base = load_base_lm("smollm2-135m", f"path:{directory}", tmp_path / "cache")
    assert base.device.type == "cuda"
    rows = choice_rows(8, prompt_words=16)
    run = lethe_gradient_ascent(base, rows, epochs=1, batch_size=4, learning_rate=1e-3, seed=0)
    assert run.steps == 2 and all(torch.isfinite(torch.tensor(run.losses)))
    # Synchronised: a bf16 product of 4096² on any CUDA GPU with bf16 takes well over a microsecond.
    assert 0 < matmul_peak_flops(torch.bfloat16, size=4096, repeats=3, device="cuda") < 2 * 4096**3 / 1e-6
