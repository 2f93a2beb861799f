"""Multiple-choice scoring as lm-evaluation-harness `acc`, optionally with per-layer hidden states.

Each (prompt, choice) pair is tokenized like lm-eval's `HFLM._encode_pair` and scored by the summed
log-probability of the choice's tokens given the prompt; a row is correct when its answer has the highest
score (ties go to the first choice, as with numpy argmax in lm-eval).

The scores are lm-eval's, computed with less work: a row's prompt is fed once with its choices branching off
it (a tree attention mask), the LM head runs only where a choice token is predicted, and matmuls run under
bf16 autocast where the hardware has it (the head in fp32; LETHE_PRECISION can say otherwise). On ARC-Easy
that is 2.8x fewer tokens than scoring every (prompt + choice) sequence apart, and no log-softmax over
positions nothing reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lethe.rows import ChoiceRow
from worker.engine.lm.head import head_only_at, logit_positions_budget
from worker.engine.lm.inputs import encode_pair, max_length, pair_sequence
from worker.engine.lm.load import CausalLM
from worker.engine.lm.placement import input_device
from worker.engine.precision import autocast, full_precision


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


@dataclass(frozen=True)
class _Group:
    """Pairs scored together: one context and the continuations that follow it (a row's choices)."""

    context: list[int]
    continuations: list[list[int]]


def _groups(tokenizer: PreTrainedTokenizerBase, row: ChoiceRow, limit: int) -> list[_Group]:
    """A row's pairs as groups of at most `limit` tokens; a pair that must be left-truncated goes alone."""
    encoded = [encode_pair(tokenizer, row.prompt, choice) for choice in row.choices]
    pairs = [pair_sequence(context_ids, continuation_ids, limit) for context_ids, continuation_ids in encoded]
    # encode_pair tokenizes the context alone, so every choice of a row follows the same context ids.
    context_ids = encoded[0][0]
    if not all(len(sequence) == len(context_ids) + n for sequence, n in pairs):
        return [_Group(sequence[:-n], [sequence[-n:]]) for sequence, n in pairs]
    groups = [_Group(context_ids, [])]
    for _, continuation_ids in encoded:
        # Every pair fits the context window alone; a group holds as many as fit together.
        if len(context_ids) + sum(map(len, groups[-1].continuations)) + len(continuation_ids) > limit:
            groups.append(_Group(context_ids, []))
        groups[-1].continuations.append(continuation_ids)
    return groups


@dataclass
class _Packed:
    """A group as one sequence: the context once, then each continuation, every one branching off the context.

    The attention mask lets a continuation's tokens see the context and their own branch only, and the
    position ids restart each branch where the context ends, so each pair is scored as if fed alone.
    """

    ids: list[int]
    positions: list[int]
    branches: list[int]  # -1 for context tokens, i for continuation i's
    targets: list[int]  # every continuation token, branch after branch
    predictors: list[int]  # index in `ids` of the token whose logits predict targets[k]
    target_pairs: list[int]  # the group's continuation that targets[k] belongs to
    last_tokens: list[int]  # index in `ids` of each continuation's last token


def _pack(group: _Group) -> _Packed:
    n_context = len(group.context)
    packed = _Packed(list(group.context), list(range(n_context)), [-1] * n_context, [], [], [], [])
    for i, continuation in enumerate(group.continuations):
        start = len(packed.ids)
        packed.ids += continuation
        packed.positions += range(n_context, n_context + len(continuation))
        packed.branches += [i] * len(continuation)
        packed.targets += continuation
        # The context's last token predicts the first continuation token, each token the next.
        packed.predictors += [n_context - 1, *range(start, start + len(continuation) - 1)]
        packed.target_pairs += [i] * len(continuation)
        packed.last_tokens.append(start + len(continuation) - 1)
    return packed


def _batches(packed: Sequence[_Packed], batch_size: int, max_targets: int) -> list[list[int]]:
    """Group indices, longest first, in batches of at most `batch_size` pairs and `max_targets` scored tokens (the
    positions whose logits the head computes: `head.logit_positions_budget`); a group over either goes alone."""
    order = sorted(range(len(packed)), key=lambda g: -len(packed[g].ids))
    batches: list[list[int]] = []
    n_pairs = n_targets = 0
    for g in order:
        n, t = len(packed[g].last_tokens), len(packed[g].targets)
        if batches and n_pairs + n <= batch_size and n_targets + t <= max_targets:
            batches[-1].append(g)
            n_pairs += n
            n_targets += t
        else:
            batches.append([g])
            n_pairs, n_targets = n, t
    return batches


def score_choices(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[ChoiceRow],
    batch_size: int,
    collect_hidden: bool = False,
    on_pairs_scored: Callable[[int], None] | None = None,
    *,
    bf16: bool | None = None,
) -> ChoiceScores:
    """Score every (prompt, choice) pair; with collect_hidden, also keep each layer's last-token state.

    A row's prompt is fed once, its choices branching off it (see _Packed). `bf16`: matmuls under bf16
    autocast (the LM head stays fp32); None = as LETHE_PRECISION says (see `precision.mixed_precision_enabled`).
    `batch_size` counts pairs; `on_pairs_scored(n)` is called after each batch with the pairs it scored.
    """
    limit = max_length(lm, tokenizer)
    groups: list[_Group] = []
    group_pairs: list[list[int]] = []  # row-major pair index of each group's continuations
    n_pairs = 0
    for row in rows:
        for group in _groups(tokenizer, row, limit):
            groups.append(group)
            group_pairs.append(list(range(n_pairs, n_pairs + len(group.continuations))))
            n_pairs += len(group.continuations)
    packed = [_pack(group) for group in groups]
    pair_loglikelihoods = np.zeros(n_pairs)
    pair_hidden: np.ndarray | None = None
    device = input_device(lm)
    lm.eval()
    with torch.inference_mode(), autocast(device, enabled=bf16), full_precision(lm.get_output_embeddings()):
        for batch in _batches(packed, batch_size, logit_positions_budget(lm.get_output_embeddings())):
            pair_index = np.concatenate([group_pairs[g] for g in batch])
            batch_loglikelihoods, hidden = _score_batch(
                lm, [packed[g] for g in batch], tokenizer.pad_token_id, device, collect_hidden
            )
            pair_loglikelihoods[pair_index] = batch_loglikelihoods
            if hidden is not None:
                if pair_hidden is None:
                    pair_hidden = np.empty((n_pairs, *hidden.shape[1:]), dtype=np.float32)
                pair_hidden[pair_index] = hidden
            if on_pairs_scored is not None:
                on_pairs_scored(len(pair_index))

    bounds = np.cumsum([0] + [len(row.choices) for row in rows])
    loglikelihoods = [pair_loglikelihoods[bounds[r] : bounds[r + 1]].tolist() for r in range(len(rows))]
    return ChoiceScores(loglikelihoods=loglikelihoods, answers=[row.answer for row in rows], hidden=pair_hidden)


def _score_batch(
    lm: CausalLM, packed: Sequence[_Packed], pad_id: int, device: torch.device, collect_hidden: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Summed continuation log-probabilities of the groups' pairs (in order) and their last-token states."""
    width = max(len(p.ids) for p in packed)
    ids = torch.full((len(packed), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(packed), width), dtype=torch.long)
    branches = torch.full((len(packed), width), -2, dtype=torch.long)  # -2: padding
    for b, p in enumerate(packed):
        ids[b, : len(p.ids)] = torch.tensor(p.ids)
        positions[b, : len(p.ids)] = torch.tensor(p.positions)
        branches[b, : len(p.ids)] = torch.tensor(p.branches)
    ids, positions, branches = ids.to(device), positions.to(device), branches.to(device)
    # Query q sees key k if k is not after q and k is context or on q's own branch. Padding sees itself only,
    # so that no attention row is empty (an empty row gives NaN states, and NaN * 0 is still NaN).
    query_branch, key_branch = branches[:, :, None], branches[:, None, :]
    sees = (positions[:, None, :] <= positions[:, :, None]) & (key_branch >= -1)
    sees &= (key_branch == -1) | (key_branch == query_branch)
    sees |= torch.eye(width, dtype=torch.bool, device=device)
    predictors = (
        torch.tensor([b for b, p in enumerate(packed) for _ in p.targets], device=device),
        torch.tensor([i for p in packed for i in p.predictors], device=device),
    )
    with head_only_at(lm.get_output_embeddings(), predictors):
        output = lm(
            input_ids=ids,
            attention_mask=_attention_mask(lm, sees[:, None]),
            position_ids=positions,
            output_hidden_states=collect_hidden,
        )
    targets = torch.tensor([t for p in packed for t in p.targets], device=device)
    if output.logits.shape[:2] != (1, len(targets)):
        raise ValueError(f"{type(lm).__name__} does not compute its logits with its output embeddings module")
    logits = output.logits[0].float()  # (targets, vocab)
    token_log_probs = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    first_pairs = np.cumsum([0] + [len(p.last_tokens) for p in packed])
    pair_of_target = [first_pairs[b] + i for b, p in enumerate(packed) for i in p.target_pairs]
    pair_loglikelihoods = torch.zeros(int(first_pairs[-1]), dtype=torch.float64, device=device)
    pair_loglikelihoods.index_add_(0, torch.tensor(pair_of_target, device=device), token_log_probs.double())

    hidden = None
    if collect_hidden:
        # The state at a pair's last token has seen the whole pair (prompt and choice).
        rows = torch.tensor([b for b, p in enumerate(packed) for _ in p.last_tokens], device=device)
        columns = torch.tensor([t for p in packed for t in p.last_tokens], device=device)
        hidden = torch.stack([layer[rows, columns] for layer in output.hidden_states], dim=1).float().cpu().numpy()
    return pair_loglikelihoods.cpu().numpy(), hidden


def _attention_mask(lm: CausalLM, sees: torch.Tensor) -> torch.Tensor:
    """The (batch, 1, query, key) mask in the form the LM's attention takes: bool for sdpa, additive for eager."""
    implementation = lm.config._attn_implementation
    if implementation == "sdpa":
        return sees
    if implementation == "eager":
        dtype = next(lm.parameters()).dtype
        return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)
    raise ValueError(f"scoring needs sdpa or eager attention, not {implementation!r}")
