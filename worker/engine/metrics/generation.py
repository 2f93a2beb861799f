"""Batched greedy generation: the continuation text of each context, as the LM writes it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from worker.engine.lm.inputs import longest_first, max_length, pad
from worker.engine.lm.load import CausalLM
from worker.engine.lm.placement import input_device


def eos_ids(lm: CausalLM, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a generation: the tokenizer's EOS and the LM's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def generate_greedy(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[list[int]],
    max_new_tokens: int | Sequence[int],
    batch_size: int,
    stop_strings: Sequence[str] = (),
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy continuation of every context (token ids), decoded without special tokens.

    A row ends at EOS, after its `max_new_tokens` (one limit for all or one per row), or before the first of
    `stop_strings` (which is cut off). Contexts keep their last max_length − max_new_tokens tokens.
    `on_batch(n)` is called after each batch of n rows.
    """
    limits = [max_new_tokens] * len(contexts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(contexts):
        raise ValueError(f"{len(limits)} max_new_tokens for {len(contexts)} contexts")
    window = max_length(lm, tokenizer)
    if any(not 1 <= limit < window for limit in limits):
        raise ValueError(f"max_new_tokens must be in [1, {window - 1}] for this LM")
    if any(not context for context in contexts):
        raise ValueError("a context must have at least one token")
    stops = eos_ids(lm, tokenizer)
    texts: dict[int, str] = {}
    device = input_device(lm)
    lm.eval()
    with torch.inference_mode():
        # Each batch generates up to its largest limit and rows are cut to their own.
        for batch in longest_first([len(context) for context in contexts], batch_size):
            batch_limit = max(limits[i] for i in batch)
            input_ids, attention_mask = pad(
                [contexts[i][-(window - batch_limit) :] for i in batch], tokenizer.pad_token_id, device, "left"
            )
            config = GenerationConfig(
                max_new_tokens=batch_limit,
                do_sample=False,
                num_beams=1,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=list(stop_strings) or None,
            )
            # PeftModel forwards generate to the base LM through nn.Module.__getattr__, which mypy types as a Tensor.
            output = lm.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                tokenizer=tokenizer if stop_strings else None,
            )
            for j, i in enumerate(batch):
                new_ids = output[j, input_ids.shape[1] :][: limits[i]].tolist()
                ends = [k for k, token in enumerate(new_ids) if token in stops]
                text = tokenizer.batch_decode([new_ids[: ends[0]] if ends else new_ids], skip_special_tokens=True)[0]
                for stop in stop_strings:
                    text = text.split(stop)[0]
                texts[i] = text
            if on_batch is not None:
                on_batch(len(batch))
    return [texts[i] for i in range(len(contexts))]
