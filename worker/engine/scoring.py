"""Multiple-choice scoring as lm-evaluation-harness `acc`, optionally with per-layer hidden states.

Each (prompt, choice) pair is tokenized like lm-eval's `HFLM._encode_pair` and scored by the summed
log-probability of the choice's tokens given the prompt; a row is correct when its answer has the highest
score (ties go to the first choice, as with numpy argmax in lm-eval).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from worker.engine.data import ChoiceRow

# A base LM, or one wrapped with LoRA adapters (PeftModel forwards `config` and the call).
CausalLM = PreTrainedModel | PeftModel

# lm-eval's fallback when neither the config nor the tokenizer gives a usable context length.
_DEFAULT_MAX_LENGTH = 2048


@dataclass
class ChoiceScores:
    """Per-row, per-choice log-likelihoods and, optionally, hidden states of every (row, choice) pair.

    Pairs are in row-major order: row 0's choices, then row 1's, ...
    `hidden[pair, layer]` is the hidden state at the pair's last token; layer 0 is the embedding output,
    layers 1..L are the outputs of the transformer blocks.
    """

    loglikelihoods: list[list[float]]
    answers: list[int]
    hidden: np.ndarray | None = None

    @property
    def predictions(self) -> list[int]:
        """The highest-scoring choice of every row."""
        return [int(np.argmax(scores)) for scores in self.loglikelihoods]

    @property
    def correct(self) -> list[bool]:
        """Whether each row's prediction is its answer."""
        return [p == a for p, a in zip(self.predictions, self.answers, strict=True)]

    @property
    def accuracy(self) -> float:
        """Fraction of rows predicted correctly."""
        return float(np.mean(self.correct))

    @property
    def pair_rows(self) -> np.ndarray:
        """Row index of every pair."""
        return np.repeat(np.arange(len(self.loglikelihoods)), [len(s) for s in self.loglikelihoods])

    @property
    def pair_is_answer(self) -> np.ndarray:
        """1 for pairs whose choice is the row's answer, else 0."""
        return np.concatenate(
            [np.arange(len(s)) == a for s, a in zip(self.loglikelihoods, self.answers, strict=True)]
        ).astype(np.int64)


def max_length(lm: CausalLM, tokenizer: PreTrainedTokenizerBase) -> int:
    """The LM's context length, looked up like lm-eval's HFLM.max_length."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(lm.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    # Tokenizers without a limit report a huge sentinel (int(1e30)).
    model_max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max_length, int) and 0 < model_max_length < 1_000_000_000:
        return model_max_length
    return _DEFAULT_MAX_LENGTH


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) as lm-eval's `_encode_pair` for a causal LM.

    Trailing whitespace of the context moves to the continuation (so " Paris" and not "Paris" is scored
    after "is "); the continuation's ids are those of tok(context + continuation) beyond len(tok(context)),
    so merges across the boundary are attributed to the continuation. No special tokens are added.
    An empty context becomes the EOS token, as lm-eval's `loglikelihood` does.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":
        return [tokenizer.eos_token_id], tokenizer.encode(continuation, add_special_tokens=False)
    whole_ids = tokenizer.encode(context + continuation, add_special_tokens=False)
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    return context_ids, whole_ids[len(context_ids) :]


def pair_sequence(context_ids: list[int], continuation_ids: list[int], limit: int) -> tuple[list[int], int]:
    """The token sequence fed to the LM for a pair, left-truncated to `limit`, and its continuation length.

    lm-eval feeds (context + continuation)[-(limit + 1):][:-1]; we also feed the last token (its hidden state
    is what the probes read), so an over-long prompt keeps one context token fewer than in lm-eval.
    """
    if not continuation_ids:
        raise ValueError("a choice encodes to no tokens of its own after the prompt")
    if len(continuation_ids) >= limit:
        raise ValueError(f"a choice of {len(continuation_ids)} tokens does not fit the LM's context ({limit})")
    return (context_ids + continuation_ids)[-limit:], len(continuation_ids)


def pad_right(sequences: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with right padding; causal attention keeps real positions unaffected."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[i, : len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


def score_choices(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[ChoiceRow],
    batch_size: int,
    collect_hidden: bool = False,
    on_pairs_scored: Callable[[int], None] | None = None,
) -> ChoiceScores:
    """Score every (prompt, choice) pair; with collect_hidden, also keep each layer's last-token state.

    `on_pairs_scored(n)` is called after each batch with the number of pairs it scored.
    """
    limit = max_length(lm, tokenizer)
    pairs = [
        pair_sequence(*encode_pair(tokenizer, row.prompt, choice), limit) for row in rows for choice in row.choices
    ]
    # Longest first (as lm-eval) so batches hold similar lengths and padding stays small.
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
    pair_loglikelihoods = [0.0] * len(pairs)
    pair_hidden: list[np.ndarray] = [np.empty(0)] * len(pairs)
    device = next(lm.parameters()).device
    lm.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, attention_mask = pad_right([pairs[i][0] for i in batch], tokenizer.pad_token_id, device)
            output = lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=collect_hidden)
            for j, i in enumerate(batch):
                sequence, n_continuation = pairs[i]
                length = len(sequence)
                # Logits at position t predict token t + 1, so the continuation tokens
                # sequence[length - n : length] are scored by logits[length - n - 1 : length - 1].
                logits = output.logits[j, length - n_continuation - 1 : length - 1].float()
                targets = torch.tensor(sequence[length - n_continuation :], device=device)
                log_probs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])
                pair_loglikelihoods[i] = float(log_probs.sum())
                if collect_hidden:
                    # The state at the last token has seen the whole pair (prompt and choice).
                    states = torch.stack([layer[j, length - 1] for layer in output.hidden_states])
                    pair_hidden[i] = states.float().cpu().numpy()
            if on_pairs_scored is not None:
                on_pairs_scored(len(batch))

    loglikelihoods: list[list[float]] = []
    position = 0
    for row in rows:
        loglikelihoods.append(pair_loglikelihoods[position : position + len(row.choices)])
        position += len(row.choices)
    hidden = np.stack(pair_hidden) if collect_hidden and pairs else None
    return ChoiceScores(loglikelihoods=loglikelihoods, answers=[row.answer for row in rows], hidden=hidden)
