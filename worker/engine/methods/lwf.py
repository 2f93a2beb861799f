"""Learning With Forgetting (LWF; Jiang et al., "Graceful Forgetting in Generative Language Models", arXiv 2505.19715).

Experimental: only the abstract and secondary summaries of the paper could be read (not its equations, algorithm or
hyperparameters), and no code by its authors was found. What they say is followed; what they leave open is Lethe's
reconstruction, stated here and published with the method (`lethe.methods`, `reconstructed`).

1. Self-knowledge. The LM that knows the task, i.e. the LM right before forgetting (the fine-tuned LM when the job
   fine-tuned first, else the base LM: the run's reference, `TrainContext.reference`), greedily continues each
   forget row's context (a text row's: the passage's first `text_prompt_tokens` tokens, at most half of it). The
   continuations, ending at the first EOS which is kept, are the knowledge to forget as the LM itself expresses it.
2. Forgetting confidence (reconstructed). The paper weights "the intended parameter updates" by the Fisher
   information of its learning task. Here: for a generated text x with g(x) = ∇θ NLL(x) over the LoRA parameters at
   the LM before forgetting, and F the diagonal empirical Fisher of the learning data (the retain rows) there,
       FC(x) = ½ Σ_i F_i Δθ_i(x)²  ∝  Σ_i F_i g_i(x)²,     Δθ(x) = ±η g(x)
   the update's squared length in the learning task's Fisher metric: how far unlearning x would move the parameters
   the learning task relies on (η and ½ dropped: they do not change the ranking; the sign does not matter).
   F_i = mean over a seeded sample of `fisher_rows` retain rows of (∂ log p(target | context) / ∂θ_i)², log p
   summing the target's tokens; NLL(x) is the token mean used in training. The ceil(top_fraction · n) texts of
   highest confidence are unlearned; the others never are. Computed once, before training.
3. Periodic unlearning (the paper's schedule, its period reconstructed). Training iterates over the learning data:
   each epoch is a seeded shuffled pass over the retain rows, a fine-tuning step (loss = NLL) per batch, and after
   every `interval` (N_u) such steps comes one gradient-ascent step (loss = −NLL) on a batch of the selected texts.
   Optimiser step s (from 0) is an unlearning step iff (s + 1) % (N_u + 1) = 0. The k-th unlearning step takes the
   k-th batch of the selected texts in seeded shuffled passes over them, so each text is ascended on once per pass.

The objective's epoch examples are the learning data (`forget_examples`), its unlearning batches come in through
`interleaved_examples`: both are functions of the prepared state and the step number, so a resumed run (which
prepares again from the weights forgetting started with) trains exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lethe.methods import LWFParams
from lethe.rows import Row, TextRow
from worker.engine.lm.inputs import encode_pair, fit_pair, pad
from worker.engine.lm.placement import input_device
from worker.engine.training.batches import Example, collate, examples_of, shuffled_batches
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
    context: TrainContext, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Greedy continuations of the prompts by the reference LM (the LM before forgetting), each cut after its first
    EOS."""
    tokenizer = context.tokenizer
    device = input_device(context.lm)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    continuations = []
    with context.reference() as lm:
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
    device = input_device(lm)
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
    # Each parameter's term on the CPU: the adapters of an LM spread over GPUs sit on several devices.
    return float(sum((f.double() * g.double().pow(2)).sum().cpu() for f, g in zip(fisher, gradient, strict=True)))


def top_fraction(confidences: Sequence[float], fraction: float) -> list[int]:
    """Indices (ascending) of the ceil(fraction · n) highest confidences; ties go to the earlier index."""
    count = math.ceil(fraction * len(confidences))
    ranked = sorted(range(len(confidences)), key=lambda i: (-confidences[i], i))
    return sorted(ranked[:count])


class LearningWithForgetting(Objective):
    """Fine-tuning on the learning data, with gradient ascent on the most Fisher-conflicting self-generated texts
    after every `interval` steps."""

    def __init__(self, params: LWFParams) -> None:
        self.params = params
        # One per forget row, in row order: the decoded continuation, its Example (context + it), its confidence.
        self.generated: list[str] = []
        self.examples: list[Example] = []
        self.confidences: list[float] = []
        self.selected: list[int] = []
        self.learning: list[Example] = []
        self.seed = 0

    def prepare(self, context: TrainContext) -> None:
        if not context.forget_rows:
            raise ValueError("lwf needs forget rows")
        if not context.retain_rows:
            raise ValueError("lwf needs retain rows: they are its learning data")
        tokenizer, limit, params = context.tokenizer, context.limit, self.params
        self.seed = context.seed
        # Left-truncate prompts so that prompt + continuation fit the context window.
        prompt_room = max(1, limit - params.max_new_tokens)
        prompts = [prompt_ids(tokenizer, row, params.text_prompt_tokens)[-prompt_room:] for row in context.forget_rows]
        continuations = generate_continuations(context, prompts, params.max_new_tokens, params.batch_size)
        self.generated = tokenizer.batch_decode(continuations, skip_special_tokens=True)
        self.examples = []
        for prompt, continuation in zip(prompts, continuations, strict=True):
            ids, n_target = fit_pair(prompt, continuation, limit)
            self.examples.append(Example(tuple(ids), n_target))

        self.learning = examples_of(tokenizer, context.retain_rows, limit)
        sample = random.Random(f"{context.seed}/fisher").sample(
            range(len(self.learning)), min(params.fisher_rows, len(self.learning))
        )
        pad_id = tokenizer.pad_token_id
        fisher = diagonal_fisher(
            example_gradients(context.lm, (self.learning[i] for i in sample), pad_id, per_token=False)
        )
        self.confidences = [
            forgetting_confidence(fisher, gradient)
            for gradient in example_gradients(context.lm, self.examples, pad_id, per_token=True)
        ]
        self.selected = top_fraction(self.confidences, params.top_fraction)

    def forget_examples(self, epoch: int, examples: list[Example]) -> list[Example]:
        """An epoch passes over the learning data (the retain rows), not over the forget rows."""
        return self.learning

    def is_unlearning_step(self, number: int) -> bool:
        """Whether optimiser step `number` (from 0) ascends: the one after every `interval` learning steps."""
        return (number + 1) % (self.params.interval + 1) == 0

    def unlearning_batch(self, k: int) -> list[int]:
        """The selected texts (indices into the forget rows) of the k-th unlearning step (from 0): the k-th batch of
        seeded shuffled passes over them."""
        passes, position = divmod(k, math.ceil(len(self.selected) / self.params.batch_size))
        batch = shuffled_batches(len(self.selected), self.params.batch_size, f"{self.seed}/lwf/{passes}")[position]
        return [self.selected[i] for i in batch]

    def interleaved_examples(self, number: int) -> list[Example] | None:
        if not self.is_unlearning_step(number):
            return None
        return [self.examples[i] for i in self.unlearning_batch(number // (self.params.interval + 1))]

    def losses(self, step: Step) -> LossTerms:
        nll = step.target_logits(step.forget).mean_nll()
        if self.is_unlearning_step(step.number):
            return LossTerms(forget=-nll)
        # A learning step: its NLL is a retain term, and the forget term a zero on its graph (not a constant), so
        # that plug-ins that differentiate the forget term on its own (gradient projection) get zero gradients.
        return LossTerms(forget=0 * nll, retain=nll)

    def unlearned_rows(self, steps: int) -> list[int]:
        """The forget rows (indices, ascending) whose texts the unlearning steps among `steps` steps ascended on."""
        unlearning_steps = steps // (self.params.interval + 1)
        return sorted({row for k in range(unlearning_steps) for row in self.unlearning_batch(k)})

    def outcome(self, steps: int) -> dict[str, Any]:
        """How many forget rows a run of `steps` steps unlearned, and which it never did: the rows top_fraction left
        out and selected rows no unlearning step reached before training stopped."""
        unlearned = self.unlearned_rows(steps)
        never = sorted(set(range(len(self.examples))) - set(unlearned))
        return {
            "forget_rows": len(self.examples),
            "selected_rows": len(self.selected),
            "unlearned_rows": len(unlearned),
            "never_unlearned_rows": len(never),
            "never_unlearned": never,
        }


def build(params: LWFParams, seed: int) -> LearningWithForgetting:
    """The LWF objective (its draws, the Fisher's retain sample and the unlearning batches, are seeded by the run's
    seed at prepare)."""
    return LearningWithForgetting(params)
