"""Examples of every kind, and left-padded batches that score each example as if it were alone."""

import pytest
import torch

from lethe.rows import ChoiceRow, QARow, TextRow
from tests.tiny_lm import synthetic_choice_rows
from worker.engine.lm.load import LoadedLM
from worker.engine.training import packing
from worker.engine.training.batches import IGNORE, collate, examples_of, make_example
from worker.engine.training.logprobs import aligned_labels, mean_nll, sequence_logprob
from worker.engine.training.packing import packs_correctly

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


def test_a_packed_batch_gives_the_padded_batchs_logits(tiny_base: LoadedLM) -> None:
    """The batch packed into one row (no padding, block-diagonal attention) predicts every target as padded."""
    tokenizer = tiny_base.tokenizer
    examples = examples_of(tokenizer, [*ROWS[:3], QARow("What is the red plum?", "a fruit")], 512)
    batch = collate(examples, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.packed is not None
    assert batch.packed.input_ids.shape == (1, sum(len(e.ids) for e in examples))  # no padding
    with torch.no_grad():
        padded = tiny_base.lm(**batch.lm_inputs()).logits
        packed = batch.packed.unpack(tiny_base.lm(**batch.packed.lm_inputs()).logits)
    assert packed.shape == padded.shape
    # Equal wherever a target is predicted (the rest, padding in the padded batch, is never read).
    predicts = aligned_labels(padded, batch.labels)[:, 1:] != IGNORE
    assert torch.allclose(packed[:, :-1][predicts], padded[:, :-1][predicts], atol=1e-4)
    assert float(mean_nll(packed, batch.labels)) == pytest.approx(float(mean_nll(padded, batch.labels)), abs=1e-5)


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
