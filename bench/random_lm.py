"""Randomly initialised LMs of real architectures, with a tokenizer trained on the fly: no download, no network.

The GPU host of scripts/gpu_check.sh has no network and room for no real weights (SmolLM2's 94 MB alone would
not travel), so the pipeline, throughput and memory are measured on LMs of the real shapes (bench/configs/*.json:
the published config.json of SmolLM2-135M and Llama-3.2-1B) with random weights. Speed and memory depend on the
shapes only; what a random LM says is noise, which is all these runs need.

The tokenizer is a byte-level BPE trained on `corpus()`, smaller than the config's vocabulary: its ids are all
below `vocab_size`, so the embedding and head keep the real shape (the head is a large part of the FLOPs).
`tiny=True` keeps the vocabulary and shrinks the rest, for a CPU dry run of the same code.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from lethe.rows import ChoiceRow

CONFIGS = Path(__file__).resolve().parent / "configs"
EOS, PAD = "<|endoftext|>", "<pad>"
TOKENIZER_VOCAB = 4096
# The shape a dry run shrinks every config to (vocabulary kept).
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "head_dim": 16}  # fmt: skip


def words(n: int = 3000, seed: int = 0) -> list[str]:
    """`n` distinct pronounceable pseudo-words (consonant-vowel syllables), seeded."""
    rng = random.Random(seed)
    found: set[str] = set()
    while len(found) < n:
        found.add("".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(1, 3))))
    return sorted(found)


def corpus(seed: int = 0) -> list[str]:
    """Sentences of the pseudo-words, for training the tokenizer (every word appears)."""
    vocabulary = words()
    rng = random.Random(seed)
    return [" ".join(rng.choices(vocabulary, k=24)) for _ in range(2000)] + [" " + " ".join(vocabulary)]


def build_random_lm(config_name: str, directory: Path, *, tiny: bool = False, seed: int = 0) -> Path:
    """Save a tokenizer and a randomly initialised LM of `bench/configs/<config_name>.json` (safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD)
    fast.save_pretrained(directory)

    settings = json.loads((CONFIGS / f"{config_name}.json").read_text())
    if tiny:
        settings |= TINY
    # The token ids are this tokenizer's; everything else is the real config.
    settings |= {"bos_token_id": None, "eos_token_id": fast.eos_token_id, "pad_token_id": fast.pad_token_id}
    if len(fast) > settings["vocab_size"]:
        raise ValueError(f"the tokenizer's {len(fast)} tokens do not fit {config_name}'s vocabulary")
    config = AutoConfig.for_model(**settings)
    # Initialised on the GPU where there is one: a billion random weights take a CPU tens of seconds of the GPU
    # check's budget, a GPU a fraction of one. (So the weights differ between the two; no figure depends on them.)
    init_device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.random.fork_rng(devices=[]), torch.device(init_device):
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    lm.save_pretrained(directory)  # safetensors
    del lm
    if init_device == "cuda":
        torch.cuda.empty_cache()
    return directory


def choice_rows(n: int, prompt_words: int, seed: int = 0) -> list[ChoiceRow]:
    """`n` rows: a prompt of `prompt_words` pseudo-words, two one-word choices (leading space), seeded."""
    rng = random.Random(seed)
    vocabulary = words()
    rows = []
    for _ in range(n):
        choices = tuple(" " + word for word in rng.sample(vocabulary, 2))
        rows.append(ChoiceRow(" ".join(rng.choices(vocabulary, k=prompt_words)), choices, rng.randrange(2)))
    return rows
