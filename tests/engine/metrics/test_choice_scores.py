import numpy as np
import torch
from transformers import AutoModelForCausalLM

from lethe.rows import ChoiceRow
from tests.tiny_lm import stored_like, synthetic_choice_rows
from worker.engine.lm import head
from worker.engine.lm.inputs import encode_pair, max_length, pair_sequence
from worker.engine.lm.load import CausalLM, LoadedLM
from worker.engine.metrics.choice_scores import ChoiceScores, score_choices


def mixed_rows() -> list[ChoiceRow]:
    """Rows of different lengths, multi-token choices, three choices and a one-word prompt, to exercise packing."""
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(9, seed=1)]
    rows.append(ChoiceRow("The big drill is a ", ("tool", "fruit salad", "kiwi"), 0))
    rows.append(ChoiceRow("A", (" lemon is a fruit", " saw"), 1))
    rows.append(ChoiceRow("So", (" the plum is a fruit", " the plum is a tool"), 0))
    return rows


def reference_scores(lm: CausalLM, tokenizer, rows: list[ChoiceRow]) -> tuple[np.ndarray, np.ndarray]:
    """The plain computation: each pair alone, the whole (left-truncated) sequence in fp32, a float64 softmax.

    Returns every pair's summed continuation log-probability and its per-layer state at the last token.
    """
    limit = max_length(lm, tokenizer)
    loglikelihoods, hidden = [], []
    for row in rows:
        for choice in row.choices:
            sequence, n = pair_sequence(*encode_pair(tokenizer, row.prompt, choice), limit)
            with torch.no_grad():
                output = lm(torch.tensor([sequence]), output_hidden_states=True)
            log_probs = torch.log_softmax(output.logits[0].double(), dim=-1)
            # The token at position p is predicted by the logits at p - 1.
            positions = range(len(sequence) - n, len(sequence))
            loglikelihoods.append(sum(float(log_probs[p - 1, sequence[p]]) for p in positions))
            hidden.append(torch.stack([layer[0, -1] for layer in output.hidden_states]).numpy())
    return np.array(loglikelihoods), np.stack(hidden)


def test_fp32_scores_and_hidden_states_match_the_plain_computation(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    expected_loglikelihoods, expected_hidden = reference_scores(tiny_base.lm, tiny_base.tokenizer, rows)
    scores = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=4, collect_hidden=True, bf16=False)
    np.testing.assert_allclose(np.concatenate(scores.loglikelihoods), expected_loglikelihoods, atol=1e-4)
    assert all(score < 0 for row_scores in scores.loglikelihoods for score in row_scores)
    assert scores.hidden is not None
    np.testing.assert_allclose(scores.hidden, expected_hidden, atol=1e-4)


def test_bf16_scores_stay_within_bf16_rounding_of_the_plain_computation(tiny_base: LoadedLM) -> None:
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(40, seed=2)] + mixed_rows()
    expected, _ = reference_scores(tiny_base.lm, tiny_base.tokenizer, rows)
    scores = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=16, bf16=True)
    actual = np.concatenate(scores.loglikelihoods)
    # bf16 keeps 8 bits of mantissa: relative rounding of 2^-9 per matmul input, far below these scores' spread.
    np.testing.assert_allclose(actual, expected, atol=0.02, rtol=0.01)
    # Predictions agree wherever the plain computation does not call it a near tie.
    bounds = np.cumsum([0] + [len(row.choices) for row in rows])
    for r, row_scores in enumerate(scores.loglikelihoods):
        reference = np.sort(expected[bounds[r] : bounds[r + 1]])
        if reference[-1] - reference[-2] > 0.05:
            assert int(np.argmax(row_scores)) == int(np.argmax(expected[bounds[r] : bounds[r + 1]]))


def test_scores_do_not_depend_on_batch_size_or_padding(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    one = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=1, collect_hidden=True, bf16=False)
    for batch_size in (3, 64):
        batched = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size, collect_hidden=True, bf16=False)
        np.testing.assert_allclose(
            np.concatenate(batched.loglikelihoods), np.concatenate(one.loglikelihoods), atol=1e-4
        )
        assert batched.hidden is not None and one.hidden is not None
        np.testing.assert_allclose(batched.hidden, one.hidden, atol=1e-4)


def test_each_prompt_is_fed_once(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    pad_id = tiny_base.tokenizer.pad_token_id
    fed: list[int] = []
    embeddings = tiny_base.lm.get_input_embeddings()
    handle = embeddings.register_forward_pre_hook(lambda _module, args: fed.append(int((args[0] != pad_id).sum())))
    try:
        score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=64, bf16=False)
    finally:
        handle.remove()
    # Per row: the context once and every continuation (these rows hold no pad token).
    encoded = [[encode_pair(tiny_base.tokenizer, row.prompt, choice) for choice in row.choices] for row in rows]
    assert sum(fed) == sum(len(pairs[0][0]) + sum(len(c) for _, c in pairs) for pairs in encoded)
    assert sum(fed) < sum(len(context) + len(c) for pairs in encoded for context, c in pairs)


def test_eager_attention_scores_like_sdpa(tiny_base: LoadedLM, tiny_lm_dir) -> None:
    eager = stored_like(AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation="eager"), tiny_base.lm)
    rows = mixed_rows()
    sdpa_scores = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=8, bf16=False)
    eager_scores = score_choices(eager, tiny_base.tokenizer, rows, batch_size=8, bf16=False)
    np.testing.assert_allclose(
        np.concatenate(eager_scores.loglikelihoods), np.concatenate(sdpa_scores.loglikelihoods), atol=1e-4
    )


def test_hidden_states_have_one_vector_per_pair_and_layer(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    scores = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=8, collect_hidden=True)
    n_pairs = sum(len(row.choices) for row in rows)
    config = tiny_base.lm.config
    assert scores.hidden is not None
    assert scores.hidden.shape == (n_pairs, config.num_hidden_layers + 1, config.hidden_size)
    assert score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=8).hidden is None


def test_overlong_prompts_are_left_truncated_like_the_plain_computation(tiny_base: LoadedLM) -> None:
    limit = max_length(tiny_base.lm, tiny_base.tokenizer)
    long_prompt = "The old saw is a tool. " * 40 + "The plum is a"
    assert len(tiny_base.tokenizer.encode(long_prompt)) > limit
    rows = [ChoiceRow(long_prompt, (" fruit", " tool is a saw"), 0), *mixed_rows()[:3]]
    expected, expected_hidden = reference_scores(tiny_base.lm, tiny_base.tokenizer, rows)
    scores = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, 4, collect_hidden=True, bf16=False)
    np.testing.assert_allclose(np.concatenate(scores.loglikelihoods), expected, atol=1e-4)
    np.testing.assert_allclose(scores.hidden, expected_hidden, atol=1e-4)


def test_a_row_whose_choices_overflow_the_context_together_is_scored_in_parts(tiny_base: LoadedLM) -> None:
    tokenizer, limit = tiny_base.tokenizer, max_length(tiny_base.lm, tiny_base.tokenizer)
    # Two choices fit beside the prompt, the third needs a second pass over it.
    choices = tuple(f" {word} is a fruit." + " The plum is a fruit." * 4 for word in ("lemon", "lime", "kiwi"))
    row = ChoiceRow("The old saw is a tool. " * 3 + "The plum is a", choices, 0)
    encoded = [encode_pair(tokenizer, row.prompt, choice) for choice in row.choices]
    assert all(len(context) + len(c) <= limit for context, c in encoded)
    assert len(encoded[0][0]) + sum(len(c) for _, c in encoded) > limit
    expected, _ = reference_scores(tiny_base.lm, tokenizer, [row])
    scores = score_choices(tiny_base.lm, tokenizer, [row], 8, bf16=False)
    np.testing.assert_allclose(scores.loglikelihoods[0], expected, atol=1e-4)


def test_reports_progress_per_batch(tiny_base: LoadedLM) -> None:
    rows = mixed_rows()
    scored: list[int] = []
    score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=5, on_pairs_scored=scored.append)
    assert sum(scored) == sum(len(row.choices) for row in rows)
    assert len(scored) > 1


def test_accuracy_is_argmax_against_the_answer_with_ties_to_the_first() -> None:
    scores = ChoiceScores(
        loglikelihoods=[[-1.0, -2.0], [-3.0, -1.0, -2.0], [-1.0, -1.0], [-5.0, -4.0]], answers=[0, 0, 1, 1]
    )
    assert scores.predictions == [0, 1, 0, 1]
    assert scores.correct == [True, False, False, True]
    assert scores.accuracy == 0.5
    assert scores.pair_rows.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert scores.pair_is_answer.tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 1]


def test_batches_end_at_the_logits_budget_and_scores_stay_the_same(tiny_base: LoadedLM, monkeypatch) -> None:
    """With room for the logits of 5 positions per batch (`head.LOGITS_BUDGET_BYTES`), a batch scores at most 5
    continuation tokens unless one row's choices alone have more, and every score is what it was with the default."""
    rows = mixed_rows()
    default = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=64, bf16=False)
    vocab = tiny_base.lm.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(head, "LOGITS_BUDGET_BYTES", 5 * vocab * 4)
    scored: list[int] = []
    handle = tiny_base.lm.get_output_embeddings().register_forward_hook(
        lambda _module, _args, output: scored.append(int(output.shape[1]))
    )
    try:
        tight = score_choices(tiny_base.lm, tiny_base.tokenizer, rows, batch_size=64, bf16=False)
    finally:
        handle.remove()
    per_row = [sum(len(encode_pair(tiny_base.tokenizer, r.prompt, c)[1]) for c in r.choices) for r in rows]
    assert len(scored) > 1 and sum(scored) == sum(per_row)
    assert sorted(n for n in scored if n > 5) == sorted(n for n in per_row if n > 5)  # each such row alone
    np.testing.assert_allclose(np.concatenate(tight.loglikelihoods), np.concatenate(default.loglikelihoods), atol=1e-4)
