"""Diagnostics: where forgetting changed the LM, by component and window of layers, scored by the Knowledge
Recovery Score of Hong et al. ("Dissecting fine-tuning unlearning in LLMs", arXiv 2410.06606).

A diagnostic (restore, patch) intervenes on one component of the forgotten LM over a window of consecutive layers
and asks how much of the pre-forgetting LM's answer logits come back. It is reported under `diagnostics`, never
judged: an adapter on a public base model can be removed outright, so putting its pre-forgetting weights back
measures localization, not depth.

KRS, as the authors' code computes it (Restoration_experiments_llama-30tokens.ipynb: `compute_loss`,
`compute_KRS`), per row:

    MSE(a, b) = mean over answer positions t and vocabulary entries v of (a[t, v] − b[t, v])²
    KRS       = 1 − MSE(z_before, z_intervened) / MSE(z_before, z_forgotten)

where z are the answer logits of the LM before forgetting, of the forgotten LM under the intervention and of the
forgotten LM as it is; the diagnostic's KRS is the mean over rows (the paper averages over questions). KRS = 1: the
intervention gives back the pre-forgetting logits exactly; 0: it changes nothing; below 0: it moves further away.

Choices where the paper leaves room (tested in tests/engine/audit/test_diagnostics.py):
- The answer is the row's own target (the correct choice, the qa answer, a text row's text), not a greedy
  generation of the pre-forgetting LM as in the paper (Lethe's rows carry their answer), and at most its first
  ANSWER_TOKENS tokens (the paper scores 30-token answers).
- The logits compared are those that predict the answer's tokens (the prompt's last position to the answer's
  last but one); the paper's code slices the answer tokens' own positions, one to the right.
- A row whose answer logits forgetting did not change at all (MSE(before, forgotten) = 0) has no KRS: it is left
  out of the mean and counted in `rows_undefined`. The mean's 95% interval is a seeded bootstrap over rows
  (`metrics.intervals.bootstrap_mean`); with no defined row the variant's KRS is None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from lethe.rows import Row
from worker.engine.lm.inputs import encode_pair, fit_pair, longest_first, pad
from worker.engine.lm.load import CausalLM
from worker.engine.lm.placement import input_device
from worker.engine.metrics.intervals import Estimate, bootstrap_mean
from worker.engine.precision import autocast, full_precision

T = TypeVar("T")

# Hong et al. score answers of 30 tokens (the pre-forgetting LM's greedy continuation, max_new_tokens=30).
ANSWER_TOKENS = 30


@dataclass(frozen=True)
class Window:
    """Decoder blocks first..last (0-based, inclusive)."""

    first: int
    last: int

    def __contains__(self, layer: object) -> bool:
        return isinstance(layer, int) and self.first <= layer <= self.last

    @property
    def name(self) -> str:
        return f"{self.first}-{self.last}"


def windows(size: int, num_layers: int, centres: Sequence[int] | Literal["all"] | None = None) -> list[Window]:
    """The distinct windows of `size` layers measured: around each centre l ("all" = every layer), or, with no
    centres (None), consecutive windows from block 0 that tile the blocks (the last one cut to the LM's depth).

    Around l: l − (size − 1) // 2 .. l + size // 2, as Hong et al.'s l − 2 .. l + 2 for size 5. Near the ends
    the window is cut (layer 0 of a 5-window: 0..2), and two centres whose cut windows coincide give one window.
    Tiling measures every block once with about 1/size of the sweep's passes: a full audit's default (CPU workers
    must finish an audit within 1.5× its forget job), with the paper's sweep one parameter away.
    """
    if size < 1:
        raise ValueError("a window holds at least one layer")
    if centres is None:
        return [Window(first, min(num_layers - 1, first + size - 1)) for first in range(0, num_layers, size)]
    if centres != "all":
        missing = [layer for layer in centres if not 0 <= layer < num_layers]
        if missing:
            raise ValueError(
                f"layers {missing} do not exist: the LM has {num_layers} decoder blocks (0-{num_layers - 1})"
            )
    selected: list[Window] = []
    for centre in range(num_layers) if centres == "all" else centres:
        window = Window(max(0, centre - (size - 1) // 2), min(num_layers - 1, centre + size // 2))
        if window not in selected:
            selected.append(window)
    return selected


@dataclass(frozen=True)
class DiagnosticVariant:
    """One component intervened on over one window, and the KRS it gave (None: no row with a defined KRS)."""

    component: str
    window: Window
    krs: Estimate | None

    @property
    def name(self) -> str:
        return f"{self.component}@{self.window.name}"


@dataclass
class DiagnosticOutcome:
    """What a diagnostic measured on a split: every (component, window) variant's KRS.

    `rows` is the split's size, `rows_undefined` the rows whose answer logits forgetting left unchanged (no KRS);
    `skipped` says which components measured nothing, and why.
    """

    split: str
    rows: int
    rows_undefined: int
    variants: list[DiagnosticVariant]
    skipped: dict[str, str] = field(default_factory=dict)
    metric: str = "krs"


def answer_logits(
    lm: CausalLM, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int, limit: int
) -> list[torch.Tensor]:
    """Each row's logits (answer tokens × vocabulary, fp32, on the CPU) at the positions that predict its answer."""
    return each_answer_logits(lm, tokenizer, rows, batch_size, limit, lambda _row, logits: logits)


def each_answer_logits(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    batch_size: int,
    limit: int,
    reduce: Callable[[int, torch.Tensor], T],
) -> list[T]:
    """`reduce(i, logits)` of each row i's answer logits (answer tokens × vocabulary, fp32, on the CPU: the positions
    that predict its answer), in row order; called as each batch comes out, so a reduction that keeps less than the
    logits (a KRS's squared error) holds one batch's logits at a time, not the split's (48 rows of 30 answer tokens
    over SmolLM2's 49,152-entry vocabulary are 283 MB).

    The rows are fed in `longest_first` batches, the same for the same rows and batch size: a pass that replays or
    patches activations captured in another pass over the same rows sees the same forward calls in the same order.
    Matmuls run under bf16 autocast where LETHE_PRECISION says so, the LM head in fp32 (as scoring does).
    """
    sequences = []
    for row in rows:
        context_ids, target_ids = encode_pair(tokenizer, row.context, row.target)
        sequences.append(fit_pair(context_ids, target_ids[:ANSWER_TOKENS], limit))
    reduced: dict[int, T] = {}
    device = input_device(lm)
    lm.eval()
    with torch.inference_mode(), autocast(device), full_precision(lm.get_output_embeddings()):
        for batch in longest_first([len(sequence) for sequence, _ in sequences], batch_size):
            # Right padding leaves every real position as it is.
            input_ids, attention_mask = pad([sequences[i][0] for i in batch], tokenizer.pad_token_id, device, "right")
            # Logits at position t predict token t + 1: the LM head runs at each row's answer-predicting positions
            # only (a row with a shorter answer repeats its last one), not over every position of the batch.
            widest = max(sequences[i][1] for i in batch)
            positions = torch.tensor(
                [
                    [len(sequences[i][0]) - sequences[i][1] - 1 + min(k, sequences[i][1] - 1) for k in range(widest)]
                    for i in batch
                ],
                device=device,
            )
            logits = lm(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=positions).logits
            for j, i in enumerate(batch):
                reduced[i] = reduce(i, logits[j, : sequences[i][1]].float().cpu())
    return [reduced[i] for i in range(len(rows))]


def mean_squared_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean over positions and vocabulary of (a − b)², in float64."""
    return float(torch.mean((a.double() - b.double()) ** 2))


class KnowledgeRecovery:
    """The KRS of interventions on the forgotten LM, against the pre-forgetting answer logits and how far forgetting
    moved each row's (MSE(before, forgotten)).

    An intervention's pass hands its logits row by row to `error` (through `each_answer_logits`), so only the
    pre-forgetting logits are kept: `per_row` and `score` read the squared errors.
    """

    def __init__(self, before: Sequence[torch.Tensor], moved: Sequence[float], seed: int) -> None:
        if len(before) != len(moved):
            raise ValueError("before and moved must be of the same rows")
        self.before = list(before)
        # MSE(before, forgotten) per row: what forgetting moved; 0 = nothing to recover on that row.
        self.moved = list(moved)
        self.seed = seed

    @classmethod
    def of_logits(
        cls, before: Sequence[torch.Tensor], forgotten: Sequence[torch.Tensor], seed: int
    ) -> KnowledgeRecovery:
        """From the forgotten LM's logits as a list (a pass can hand them to `moved_by` one by one instead)."""
        if len(before) != len(forgotten):
            raise ValueError("before and forgotten must hold the logits of the same rows")
        return cls(before, [mean_squared_error(b, f) for b, f in zip(before, forgotten, strict=True)], seed)

    @staticmethod
    def moved_by(before: Sequence[torch.Tensor]) -> Callable[[int, torch.Tensor], float]:
        """The reduction of the forgotten pass (`each_answer_logits`): row i's MSE(before, forgotten)."""
        return lambda row, forgotten: mean_squared_error(before[row], forgotten)

    @property
    def rows_undefined(self) -> int:
        return sum(moved == 0 for moved in self.moved)

    def error(self, row: int, intervened: torch.Tensor) -> float:
        """MSE(before, intervened) of row `row`: the reduction an intervention's pass hands to each_answer_logits."""
        return mean_squared_error(self.before[row], intervened)

    def errors(self, intervened: Sequence[torch.Tensor]) -> list[float]:
        """`error` of every row, from an intervention's logits as a list."""
        if len(intervened) != len(self.before):
            raise ValueError("intervened must hold the logits of the same rows")
        return [self.error(row, logits) for row, logits in enumerate(intervened)]

    def per_row(self, errors: Sequence[float]) -> list[float | None]:
        """1 − MSE(before, intervened) / MSE(before, forgotten) per row, from the intervention's `error` of every
        row; None where forgetting moved nothing."""
        if len(errors) != len(self.before):
            raise ValueError("errors must be of the same rows")
        return [None if moved == 0 else 1 - error / moved for error, moved in zip(errors, self.moved, strict=True)]

    def score(self, errors: Sequence[float]) -> Estimate | None:
        """The mean KRS over the rows where it is defined, with its bootstrap interval; None if none is."""
        defined = [value for value in self.per_row(errors) if value is not None]
        return bootstrap_mean(defined, self.seed) if defined else None
