"""Examples of every kind, and left-padded batches that score each example as if it were alone."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lethe.rows import ChoiceRow, QARow, TextRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM
from worker.engine.training import objective, packing
from worker.engine.training.batches import IGNORE, collate, examples_of, make_example
from worker.engine.training.logprobs import TargetLogits, mean_nll, sequence_logprob
from worker.engine.training.packing import packing_pays, packs_correctly

ROWS = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(32, seed=0)]


def test_examples_cover_every_kind(tiny_base: LoadedLM) -> None:
    tokenizer = tiny_base.tokenizer
    choice = make_example(tokenizer, "The red apple is a", " fruit", 512)
    assert list(choice.ids[-choice.n_target :]) == tokenizer.encode(" fruit", add_special_tokens=False)
    [qa, text] = examples_of(tokenizer, [QARow("What is an apple?", "a fruit"), TextRow("the apple")], 512)
    assert tokenizer.decode(list(qa.ids[-qa.n_target :])) == " a fruit"
    assert tokenizer.decode(list(qa.ids[: -qa.n_target])) == "Question: What is an apple?\nAnswer:"
    # A passage is all target, after the EOS token standing for the empty context.
    assert text.ids[0] == tokenizer.eos_token_id and text.n_target == len(text.ids) - 1
    # Over-long targets keep their beginning.
    long = make_example(tokenizer, "", "the apple " * 100, 16)
    assert len(long.ids) == 16 and long.n_target == 15


def test_a_left_padded_batch_scores_each_example_as_if_it_were_alone(tiny_base: LoadedLM) -> None:
    tokenizer = tiny_base.tokenizer
    examples = examples_of(tokenizer, [*ROWS[:2], QARow("What is the red plum?", "a fruit")], 512)
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.target_tokens == sum(e.n_target for e in examples)
    assert batch.keep == max(e.n_target for e in examples) + 1
    assert ((batch.labels != IGNORE).sum(-1) == torch.tensor([e.n_target for e in examples])).all()
    with torch.no_grad():
        logits = tiny_base.lm(**batch.lm_inputs()).logits
    assert logits.shape[1] == batch.keep  # only the columns that predict a target
    summed, counts = sequence_logprob(logits, batch.labels)
    for j, example in enumerate(examples):
        # By hand: the example alone, unpadded, every position's logits.
        with torch.no_grad():
            alone = tiny_base.lm(input_ids=torch.tensor([example.ids])).logits[0]
        log_probs = torch.log_softmax(alone.float(), -1)
        expected = sum(
            float(log_probs[t - 1, example.ids[t]])
            for t in range(len(example.ids) - example.n_target, len(example.ids))
        )
        assert float(summed[j]) == pytest.approx(expected, abs=1e-4)
        assert int(counts[j]) == example.n_target
    assert float(mean_nll(logits, batch.labels)) == pytest.approx(-float(summed.sum()) / batch.target_tokens, 1e-5)


def test_the_lm_head_runs_at_the_target_positions_alone(tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packed or padded, a loss's forward runs the LM head at the positions that predict a target token and nowhere
    else, and both give there what the padded batch's full logits hold."""
    tokenizer = tiny_base.tokenizer
    examples = examples_of(tokenizer, [*ROWS[:3], QARow("What is the red plum?", "a fruit")], 512)
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.packed is not None
    assert batch.packed.input_ids.shape == (1, sum(len(e.ids) for e in examples))  # no padding
    assert objective._packs(tiny_base.lm, batch)  # fed packed (this checks once that the LM packs correctly)
    head_positions: list[int] = []
    head = tiny_base.lm.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _args, out: head_positions.append(out.shape[-2]))
    try:
        with torch.no_grad():
            full = TargetLogits.of(tiny_base.lm(**batch.lm_inputs()).logits, batch.labels)
            packed = objective._target_forward(tiny_base.lm, batch)  # type: ignore[arg-type]
            monkeypatch.setattr(objective, "packing_pays", lambda *_: False)
            padded = objective._target_forward(tiny_base.lm, batch)  # type: ignore[arg-type]
    finally:
        handle.remove()
    # The full logits: the last keep columns of every row, which hold more than the targets.
    assert head_positions == [batch.keep, batch.target_tokens, batch.target_tokens]
    assert batch.target_tokens < batch.size * (batch.keep - 1)
    for targets in (packed, padded):
        assert torch.equal(targets.targets, full.targets) and torch.equal(targets.rows, full.rows)
        assert torch.allclose(targets.logits, full.logits, atol=1e-4)
        summed, counts = targets.sequence_logprob()
        assert counts.tolist() == [e.n_target for e in examples]
        torch.testing.assert_close(summed, full.sequence_logprob()[0], atol=1e-4, rtol=1e-5)


def test_packing_is_checked_against_sequences_run_alone(tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch) -> None:
    assert packs_correctly(tiny_base.lm)

    # An LM that lets packed sequences attend to each other (as if it ignored the restarting positions) fails.
    class Leaky(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_base.lm
            self.config = tiny_base.lm.config

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None, **_: object) -> object:
            return self.inner(input_ids=input_ids)  # one causal sequence: no block-diagonal mask

    monkeypatch.setattr(packing, "_checked", {})
    assert not packs_correctly(Leaky())  # type: ignore[arg-type]


def test_packing_pays_for_short_rows_and_not_for_long_ones() -> None:
    """The FLOP rule of `packing_pays` on Llama-3.2-1B's shape (ρ ≈ 2·2048·16 / 0.97e9 ≈ 6.8e-5, built on the meta
    device): the bench's CPU batches (8 rows of about 60 tokens, 40% padding) pack; the GPU bench's (16 rows of about
    550 tokens, 8% padding) do not, since the packed row's 8,800² pairs of attention outweigh the padding saved."""
    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):
        lm = LlamaForCausalLM(config)
    ratio = packing._attention_ratio(lm)
    assert ratio == pytest.approx(2 * 2048 * 16 / 973_078_528)
    assert packing_pays(lm, rows=8, width=60, tokens=290)
    assert not packing_pays(lm, rows=16, width=600, tokens=8800)
    # No padding at all: the packed row is never cheaper (the same linear work, more attention pairs).
    assert not packing_pays(lm, rows=4, width=100, tokens=400)


def test_a_batch_whose_packing_does_not_pay_is_fed_padded(tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """`objective._target_forward` asks `packing_pays` with the batch's shape and feeds the padded batch when it
    says no."""
    tokenizer = tiny_base.tokenizer
    batch = collate(examples_of(tokenizer, ROWS[:3], 512), tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.packed is not None
    fed: list[tuple[int, ...]] = []
    handle = tiny_base.lm.register_forward_pre_hook(
        lambda _m, _a, kwargs: fed.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    asked: list[tuple[int, int, int]] = []
    try:
        for pays in (True, False):

            def rule(_lm: object, rows: int, width: int, tokens: int, pays: bool = pays) -> bool:
                asked.append((rows, width, tokens))
                return pays

            monkeypatch.setattr(objective, "packing_pays", rule)
            with torch.no_grad():
                objective._target_forward(tiny_base.lm, batch)  # type: ignore[arg-type]
    finally:
        handle.remove()
    shape = tuple(batch.input_ids.shape)
    assert asked == [(*shape, batch.packed.input_ids.shape[1])] * 2
    assert fed == [tuple(batch.packed.input_ids.shape), shape]


def test_the_packing_check_allows_bf16_a_rounding_step_of_its_own() -> None:
    """Packed and separate bf16 logits may differ by bf16's rounding step (seen on a CPU without native bf16), far
    below what attending across sequences does (test above: 0.28 of a 0.42 scale); fp32 keeps the tight bound."""
    assert packing._tolerance(torch.float32) == 1e-3
    assert packing._tolerance(torch.bfloat16) == 2 * 2**-7


def test_the_packed_row_is_built_only_when_the_batch_is_fed_packed(
    tiny_base: LoadedLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = tiny_base.tokenizer
    examples = examples_of(tokenizer, ROWS[:3], 512)
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.tokens == sum(len(e.ids) for e in examples) < batch.input_ids.numel()
    monkeypatch.setattr(objective, "packing_pays", lambda *_: False)
    with torch.no_grad():
        objective._target_forward(tiny_base.lm, batch)  # type: ignore[arg-type]
    assert "packed" not in vars(batch)  # never built
    monkeypatch.setattr(objective, "packing_pays", lambda *_: True)
    with torch.no_grad():
        objective._target_forward(tiny_base.lm, batch)  # type: ignore[arg-type]
    assert "packed" in vars(batch) and batch.packed is not None
    assert batch.packed.input_ids.shape[1] == batch.tokens
