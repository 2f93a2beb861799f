"""A tiny causal LM and a learnable multiple-choice task, for fast CPU tests of the whole suite."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OlmoConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from worker.engine.lm.block_weights import block_matmul_layers, store_block_matmuls

EOS = "<|endoftext|>"
PAD = "<pad>"

# The task: the prompt names a thing, the answer is its fixed category.
_FRUITS = ["apple", "pear", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon", "lime", "kiwi", "fig"]
_TOOLS = ["hammer", "saw", "drill", "wrench", "chisel", "spanner", "pliers", "file", "rasp", "axe", "vise", "clamp"]
CATEGORIES = {word: " fruit" for word in _FRUITS} | {word: " tool" for word in _TOOLS}
# Adjectives vary the prompts, so that rows about the same thing are not scored identically.
ADJECTIVES = ["red", "big", "old", "small", "new", "green"]


def synthetic_choice_rows(n: int, seed: int) -> list[dict]:
    """`n` rows {"prompt", "choices", "answer"}: 2 choices (leading space) in random order, seeded."""
    rng = random.Random(seed)
    words = sorted(CATEGORIES)
    labels = sorted(set(CATEGORIES.values()))
    rows = []
    for _ in range(n):
        word = rng.choice(words)
        adjective = rng.choice(ADJECTIVES)
        choices = labels[:]
        rng.shuffle(choices)
        rows.append(
            {"prompt": f"The {adjective} {word} is a", "choices": choices, "answer": choices.index(CATEGORIES[word])}
        )
    return rows


def synthetic_qa_rows(n: int, seed: int) -> list[dict]:
    """`n` qa rows about the same task, with a paraphrased question and the wrong category as perturbed answer."""
    rng = random.Random(seed)
    words = sorted(CATEGORIES)
    rows = []
    for _ in range(n):
        word, adjective = rng.choice(words), rng.choice(ADJECTIVES)
        right = CATEGORIES[word].strip()
        wrong = "tool" if right == "fruit" else "fruit"
        rows.append(
            {
                "question": f"The {adjective} {word} is a",
                "answer": right,
                "paraphrased_question": f"The {word} is a",
                "paraphrased_answer": right,
                "perturbed_answers": [wrong],
            }
        )
    return rows


def synthetic_text_rows(n: int, seed: int) -> list[dict]:
    """`n` short passages made of the task's sentences."""
    rng = random.Random(seed)
    words = sorted(CATEGORIES)
    return [
        {"text": " ".join(f"The {rng.choice(ADJECTIVES)} {w} is a{CATEGORIES[w]}." for w in rng.sample(words, 3))}
        for _ in range(n)
    ]


def task_corpus() -> list[str]:
    """Every prompt + choice text of the task, for training the tokenizer."""
    labels = sorted(set(CATEGORIES.values()))
    return [
        f"The {adjective} {word} is a{label}" for adjective in ADJECTIVES for word in CATEGORIES for label in labels
    ]


def _save_tokenizer(directory: Path, corpus: list[str]) -> PreTrainedTokenizerFast:
    """Save a byte-level BPE tokenizer trained on `corpus` into `directory` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(directory)
    return fast


def _save_lm(directory: Path, config: PretrainedConfig) -> None:
    """Save a randomly initialised causal LM of `config` (seed 0) into `directory`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(config)
    lm.save_pretrained(directory)


def build_tiny_lm(directory: Path, corpus: list[str]) -> Path:
    """Save a byte-level BPE tokenizer trained on `corpus` and a randomly initialised tiny Llama (seed 0)."""
    fast = _save_tokenizer(directory, corpus)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    _save_lm(directory, config)
    return directory


# The decoder families Lethe supports, each as its transformers config class (the LM class follows from it).
FAMILY_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "gemma": GemmaConfig,
    "phi3": Phi3Config,
    "olmo": OlmoConfig,
    "gpt_neox": GPTNeoXConfig,
    "gpt2": GPT2Config,
}
FAMILIES = list(FAMILY_CONFIGS)


def tiny_family_config(family: str, vocab_size: int, eos_token_id: int, pad_token_id: int) -> PretrainedConfig:
    """A tiny config of `family`: 2 blocks, width 32, 4 heads of 8, MLP width 64, 128 positions, no dropout; every
    other setting is the family's default (Gemma and GPT-2 tie their head to the embeddings, as their LMs do)."""
    tokens = {
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "bos_token_id": None,
    }
    if family == "gpt2":
        # GPT-2's MLP is 4 × n_embd wide (n_inner=None); its dropouts default to 0.1.
        return GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **tokens
        )
    shape = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    if family != "gpt_neox":
        # Qwen3's and Gemma's head_dim default to 128 and 256 whatever the width.
        shape |= {"num_key_value_heads": 4, "head_dim": 8}
    return FAMILY_CONFIGS[family](**shape, **tokens)


def build_tiny_family_lm(directory: Path, corpus: list[str], family: str) -> Path:
    """Save the tokenizer of `build_tiny_lm` and a randomly initialised tiny LM of `family` (seed 0)."""
    fast = _save_tokenizer(directory, corpus)
    _save_lm(directory, tiny_family_config(family, len(fast), fast.eos_token_id, fast.pad_token_id))
    return directory


def stored_like(lm: Any, base: Any) -> Any:
    """`lm` (a transformers LM, or a PeftModel around one) frozen, with its decoder blocks' linear weights in the
    dtype `base`'s are stored in: bf16 where `base` was loaded under bf16 autocast on a CPU
    (worker/engine/lm/block_weights.py), as they are otherwise."""
    dtype = block_matmul_layers(base)[0].get_parameter("weight").dtype
    if dtype != torch.float32:
        lm.requires_grad_(False)
        store_block_matmuls(lm, dtype)
    return lm
