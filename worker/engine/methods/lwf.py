"""Learning With Forgetting (LWF; Jiang et al., "Graceful Forgetting in Generative Language Models", arXiv 2505.19715).

Only the abstract and secondary summaries of the paper could be read (not its equations or hyperparameters); the
definitions below follow them and the issue's description, and where we had to choose, the choice is stated.

1. Self-knowledge. The base LM (the adapter disabled) greedily continues each forget row's context (a text row's:
   the passage's first `text_prompt_tokens` tokens, at most half of it). The continuations, ending at the first EOS
   which is kept, are the knowledge to forget as the LM itself expresses it.
2. Forgetting confidence. The paper scores a generated text x by -log p(θ_x | D_L): how improbable, under a
   Laplace approximation of the learning task's posterior (precision = its Fisher information F), are the
   parameters θ_x that an update on x moves to; the more improbable, the more x conflicts with the learning task
   and the more it is to be forgotten. Centred on the current parameters, with the diagonal empirical Fisher of the
   retain rows (Lethe's learning task) and the update Δθ(x) = ±η g(x), g(x) = ∇θ NLL(x) (the sign, descent or
   ascent, does not matter in a quadratic form), this is
       FC(x) = ½ Σ_i F_i Δθ_i(x)²  ∝  Σ_i F_i g_i(x)²
   over the LoRA parameters (η and ½ dropped: they do not change the ranking). F_i = mean over the retain rows of
   (∂ log p(target | context) / ∂θ_i)²; log p sums the target's tokens, NLL(x) is the token mean used in training.
   The ceil(top_fraction · n) texts of highest confidence are unlearned.
3. Periodic unlearning. Gradient ascent (loss = -NLL) on batches of the selected texts, and every `interval`-th
   optimiser step instead a fine-tuning step (loss = NLL) on a retain batch. The paper fine-tunes on its learning
   task and unlearns every N_u steps; Lethe's run is counted in passes over the forget texts, so the roles are
   swapped; at interval = 2 (strict alternation) the two schedules are the same. The loop draws a forget batch on
   every step, so a tuning step leaves its batch unused: an epoch ascends on about (interval - 1) / interval of the
   selected texts, a different part each epoch (the loop's seeded shuffle).

At prepare time the adapter is fresh (B = 0), so the LM is the base LM and the gradients are those of the adapter's
first step: only the B matrices get any (A's gradient is multiplied by B = 0), and the confidence lives there.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lethe.methods import LWFParams
from lethe.rows import Row, TextRow
from worker.engine.lm.inputs import encode_pair, fit_pair, pad
from worker.engine.training.batches import Example, collate, examples_of
from worker.engine.training.logprobs import mean_nll, sequence_logprob
from worker.engine.training.objective import LossTerms, Objective, Step, TrainContext


def prompt_ids(tokenizer: PreTrainedTokenizerBase, row: Row, text_prompt_tokens: int) -> list[int]:
    """The tokens a row's continuation is generated after: its context, or a text row's passage beginning."""
    if isinstance(row, TextRow):
        ids = tokenizer.encode(row.text, add_special_tokens=False)
        return ids[: max(1, min(text_prompt_tokens, len(ids) // 2))]
    context_ids, _ = encode_pair(tokenizer, row.context, row.target)
    return context_ids


def generate_continuations(
    lm: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
) -> list[list[int]]:
    """Greedy continuations of the prompts by the base LM (adapter disabled), each cut after its first EOS."""
    device = next(lm.parameters()).device
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    continuations = []
    with torch.no_grad(), lm.disable_adapter():
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = pad(prompts[start : start + batch_size], pad_id, device, "left")
            output = lm.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
            for ids in output[:, input_ids.shape[1] :].tolist():
                continuations.append(ids[: ids.index(eos_id) + 1] if eos_id in ids else ids)
    return continuations


def example_gradients(
    lm: PeftModel, examples: Iterable[Example], pad_id: int, per_token: bool
) -> Iterator[list[torch.Tensor]]:
    """Each example's gradient (fp32) over the trainable parameters of its target's NLL: token mean or sum."""
    device = next(lm.parameters()).device
    trainable = [p for p in lm.parameters() if p.requires_grad]
    for example in examples:
        batch = collate([example], pad_id, device)
        logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = mean_nll(logits, batch.labels) if per_token else -sequence_logprob(logits, batch.labels)[0].sum()
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        yield [torch.zeros_like(p) if g is None else g.float() for p, g in zip(trainable, grads, strict=True)]


def diagonal_fisher(gradients: Iterable[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Empirical diagonal Fisher information: the mean over examples of each parameter's squared gradient."""
    total: list[torch.Tensor] | None = None
    count = 0
    for grads in gradients:
        squares = [g.pow(2) for g in grads]
        total = squares if total is None else [t + s for t, s in zip(total, squares, strict=True)]
        count += 1
    if total is None:
        raise ValueError("the Fisher information needs at least one example")
    return [t / count for t in total]


def forgetting_confidence(fisher: Sequence[torch.Tensor], gradient: Sequence[torch.Tensor]) -> float:
    """Σ_i F_i g_i²: the intended update's squared length in the Fisher metric (up to η²/2)."""
    return float(sum((f.double() * g.double().pow(2)).sum() for f, g in zip(fisher, gradient, strict=True)))


def top_fraction(confidences: Sequence[float], fraction: float) -> list[int]:
    """Indices (ascending) of the ceil(fraction · n) highest confidences; ties go to the earlier index."""
    count = math.ceil(fraction * len(confidences))
    ranked = sorted(range(len(confidences)), key=lambda i: (-confidences[i], i))
    return sorted(ranked[:count])


class LearningWithForgetting(Objective):
    """Gradient ascent on the most Fisher-conflicting self-generated texts, with a retain tuning step every interval."""

    uses_retain = True

    def __init__(self, params: LWFParams) -> None:
        self.params = params
        # One per forget row, in row order: the decoded continuation, its Example (context + it), its confidence.
        self.generated: list[str] = []
        self.examples: list[Example] = []
        self.confidences: list[float] = []
        self.selected: list[int] = []

    def prepare(self, context: TrainContext) -> None:
        if not context.forget_rows:
            raise ValueError("lwf needs forget rows")
        tokenizer, limit, params = context.tokenizer, context.limit, self.params
        # Left-truncate prompts so that prompt + continuation fit the context window.
        prompt_room = max(1, limit - params.max_new_tokens)
        prompts = [prompt_ids(tokenizer, row, params.text_prompt_tokens)[-prompt_room:] for row in context.forget_rows]
        continuations = generate_continuations(context.lm, tokenizer, prompts, params.max_new_tokens, params.batch_size)
        self.generated = tokenizer.batch_decode(continuations, skip_special_tokens=True)
        self.examples = []
        for prompt, continuation in zip(prompts, continuations, strict=True):
            ids, n_target = fit_pair(prompt, continuation, limit)
            self.examples.append(Example(tuple(ids), n_target))

        retain_examples = examples_of(tokenizer, context.retain_rows, limit)
        sample = random.Random(f"{context.seed}/fisher").sample(
            range(len(retain_examples)), min(params.fisher_rows, len(retain_examples))
        )
        pad_id = tokenizer.pad_token_id
        fisher = diagonal_fisher(
            example_gradients(context.lm, (retain_examples[i] for i in sample), pad_id, per_token=False)
        )
        self.confidences = [
            forgetting_confidence(fisher, gradient)
            for gradient in example_gradients(context.lm, self.examples, pad_id, per_token=True)
        ]
        self.selected = top_fraction(self.confidences, params.top_fraction)

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        return [self.examples[i] for i in self.selected]

    def is_tuning_step(self, number: int) -> bool:
        """Whether optimiser step `number` (from 0) fine-tunes on retain rather than ascends on forget texts."""
        return (number + 1) % self.params.interval == 0

    def losses(self, step: Step) -> LossTerms:
        if not self.is_tuning_step(step.number):
            return LossTerms(forget=-mean_nll(step.logits(step.forget), step.forget.labels))
        if step.retain is None:
            raise ValueError("lwf needs a retain batch on its fine-tuning steps")
        retain = mean_nll(step.logits(step.retain), step.retain.labels)
        # No forget loss on this step; a zero on the retain graph (not a constant) so that plug-ins that
        # differentiate the forget term on its own (gradient projection) get zero gradients rather than an error.
        return LossTerms(forget=0 * retain, retain=retain)


def build(params: LWFParams, seed: int) -> LearningWithForgetting:
    """The LWF objective (its one draw, the Fisher's retain sample, is seeded by the run's seed at prepare)."""
    return LearningWithForgetting(params)
