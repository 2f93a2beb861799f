"""Target log-probabilities: log_softmax's numbers and gradients, with one logits-sized tensor in the backward,
computed from the target positions alone."""

from collections.abc import Callable

import pytest
import torch

from worker.engine.training import logprobs
from worker.engine.training.batches import IGNORE
from worker.engine.training.logprobs import TargetLogits, mean_nll, sequence_logprob


def _by_log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook form: log_softmax over the vocabulary, then the target's entry (the module's former code)."""
    targets = labels[:, labels.shape[1] - logits.shape[1] :][:, 1:]
    mask = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask, mask


def _batch(dtype: torch.dtype, columns: int = 7, kept: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 3 rows (the last `kept` columns of `columns`) over a 50-word vocabulary, labels with padding."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 50, (3, columns), generator=generator)
    labels[0, :3] = IGNORE  # a prompt, then targets
    labels[1, :] = IGNORE
    labels[1, -2:] = torch.tensor([4, 9])  # one short target
    kept = kept or columns
    logits = (torch.randn(3, kept, 50, generator=generator, dtype=dtype) * 4).requires_grad_()
    return logits, labels


def _saved_beyond(inputs: list[torch.Tensor], loss: Callable[[], torch.Tensor]) -> list[int]:
    """The sizes of the tensors `loss()`'s graph saves for its backward other than `inputs` (by storage)."""
    kept = {tensor.untyped_storage().data_ptr() for tensor in inputs}
    own: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in kept:
            own.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss()
    return own


def test_the_function_is_log_softmaxs_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 2 positions, so that the chunk loops meet a partial last chunk too.
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK_BYTES", 2 * 50 * 4)
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(7, 50, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.randint(0, 50, (7,), generator=generator)
    got = logprobs._TargetLogProb.apply(logits, targets)
    want = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn(7, dtype=torch.float64, generator=generator)
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: logprobs._TargetLogProb.apply(x, targets), (logits,))


@pytest.mark.parametrize("kept", [None, 4])
def test_target_logprobs_are_log_softmaxs(kept: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK_BYTES", 2 * 50 * 4)
    logits, labels = _batch(torch.float32, kept=kept)
    targets = TargetLogits.of(logits, labels)
    want, mask = _by_log_softmax(logits, labels)
    # Target positions only, row by row, each row's in order.
    assert targets.rows.tolist() == mask.nonzero()[:, 0].tolist()
    assert targets.logits.shape == (int(mask.sum()), 50)
    got = targets.token_logprobs()
    torch.testing.assert_close(got, want[mask])
    weights = torch.randn(got.shape)
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    (want_grad,) = torch.autograd.grad((want[mask] * weights).sum(), logits)
    torch.testing.assert_close(grad, want_grad)
    # Positions without a target (row 1's prompt, and the last column, which predicts no token of the batch) get no
    # gradient at all.
    assert torch.count_nonzero(grad[1, : grad.shape[1] - 3]) == 0
    assert torch.count_nonzero(grad[:, -1]) == 0


def test_losses_match_log_softmax() -> None:
    logits, labels = _batch(torch.float32)
    want = _by_log_softmax(logits, labels)[0]
    summed, counts = sequence_logprob(logits, labels)
    assert counts.tolist() == [4, 2, 6]
    torch.testing.assert_close(summed, want.sum(-1))
    torch.testing.assert_close(mean_nll(logits, labels), -want.sum() / 12)


def test_the_backward_keeps_no_logits_sized_tensor_of_its_own() -> None:
    """What the graph saves beyond the target positions' logits is a float per position: log_softmax saved a
    second logits-sized tensor (its output) for the backward."""
    logits, labels = _batch(torch.float32, columns=40)
    targets = TargetLogits.of(logits, labels)
    own = _saved_beyond([targets.logits], targets.mean_nll)
    assert own and max(own) <= targets.targets.numel()  # per position: the targets, the log-sum-exp
    old_form = _saved_beyond([targets.logits], lambda: _by_log_softmax(logits, labels)[0].sum())
    assert max(old_form) == 3 * 39 * 50  # the old form: log_softmax's output


def test_the_kl_to_a_reference_is_the_textbook_ones_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK_BYTES", 2 * 50 * 4)  # chunks of 2 positions, the last partial
    generator = torch.Generator().manual_seed(2)
    logits = (torch.randn(7, 50, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    reference = torch.randn(7, 50, generator=generator, dtype=torch.float64) * 3
    got = logprobs._ReferenceKL.apply(logits, reference)
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(reference, -1)
    want = (log_q.exp() * (log_q - log_p)).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert float(logprobs._ReferenceKL.apply(reference, reference).abs().max()) < 1e-12
    weights = torch.randn(7, dtype=torch.float64, generator=generator)
    (grad,) = torch.autograd.grad((got * weights).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: logprobs._ReferenceKL.apply(x, reference), (logits,))


def test_the_kl_saves_nothing_but_its_two_inputs() -> None:
    logits, labels = _batch(torch.float32, columns=40)
    current = TargetLogits.of(logits, labels)
    reference = TargetLogits.of(torch.randn(logits.shape), labels)
    assert _saved_beyond([current.logits, reference.logits], lambda: current.kl_from(reference).sum()) == []

    def textbook() -> torch.Tensor:
        log_p, log_q = torch.log_softmax(current.logits, -1), torch.log_softmax(reference.logits, -1)
        return (log_q.exp() * (log_q - log_p)).sum()

    assert max(_saved_beyond([current.logits, reference.logits], textbook)) == current.logits.numel()
