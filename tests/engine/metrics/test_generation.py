import copy

import pytest
import torch

from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attach_lora
from worker.engine.metrics.generation import generate_greedy

PROMPTS = ["The red apple is a", "Question: What is the big saw?\nAnswer:", "A", "The old green hammer is a fruit and"]


def contexts(tiny_base: LoadedLM) -> list[list[int]]:
    return [tiny_base.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


def manual_greedy(tiny_base: LoadedLM, context: list[int], n: int) -> str:
    """Argmax step by step over the whole sequence: no cache, no padding."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            token = int(tiny_base.lm(torch.tensor([ids])).logits[0, -1].argmax())
            if token == tiny_base.tokenizer.eos_token_id:
                break
            ids.append(token)
    return tiny_base.tokenizer.batch_decode([ids[len(context) :]], skip_special_tokens=True)[0]


def test_greedy_generation_matches_a_manual_loop_at_any_batch_size(tiny_base: LoadedLM) -> None:
    prompts = contexts(tiny_base)
    expected = [manual_greedy(tiny_base, c, 8) for c in prompts]
    for batch_size in (1, 3, 4):
        assert generate_greedy(tiny_base.lm, tiny_base.tokenizer, prompts, 8, batch_size) == expected


def test_each_row_stops_at_its_own_limit(tiny_base: LoadedLM) -> None:
    prompts = contexts(tiny_base)
    limits = [8, 2, 5, 1]
    texts = generate_greedy(tiny_base.lm, tiny_base.tokenizer, prompts, limits, batch_size=4)
    assert texts == [manual_greedy(tiny_base, c, n) for c, n in zip(prompts, limits, strict=True)]
    with pytest.raises(ValueError):
        generate_greedy(tiny_base.lm, tiny_base.tokenizer, prompts, [1, 2], batch_size=4)
    with pytest.raises(ValueError):
        generate_greedy(tiny_base.lm, tiny_base.tokenizer, prompts, 128, batch_size=4)


def test_generation_is_cut_before_a_stop_string(tiny_base: LoadedLM) -> None:
    prompts = contexts(tiny_base)
    full = generate_greedy(tiny_base.lm, tiny_base.tokenizer, prompts, 12, batch_size=4)
    stop = full[0][3:5]  # a piece of the first row's text
    cut = generate_greedy(tiny_base.lm, tiny_base.tokenizer, prompts, 12, batch_size=4, stop_strings=[stop])
    assert cut == [text.split(stop)[0] for text in full]
    assert cut[0] == full[0][: full[0].index(stop)]


def test_generation_works_through_a_peft_model(tiny_base: LoadedLM) -> None:
    prompts = contexts(tiny_base)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    # Fresh LoRA adapters are a no-op (B = 0), so the text is the base LM's.
    assert generate_greedy(peft_lm, tiny_base.tokenizer, prompts, 8, 2) == generate_greedy(
        tiny_base.lm, tiny_base.tokenizer, prompts, 8, 2
    )
