"""Every metric of a split, with per-example values to store and audit; the membership-inference AUCs and PrivLeak
of a forget set; the primary score a split is tracked by.

A qa or text split costs one teacher-forced pass (shared by every teacher-forced metric and the MIA scores of its
rows) and one batched greedy generation pass; a choice split one scoring pass of its (prompt, choice) pairs, and
one more over its (prompt, answer) pairs for their MIA scores.

Every aggregate carries its 95% interval (`intervals.py`), drawn from the per-example values: Wilson for
accuracies, a bootstrap over rows (seeded by the caller's seed, the job's) for means, and for perplexity a
bootstrap of the ratio total NLL / total tokens over rows, since perplexity is token-weighted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from lethe.rows import QA_TEMPLATE, ChoiceRow, QARow, Row, TextRow, kind_of
from worker.engine.lm.inputs import encode_pair
from worker.engine.lm.load import CausalLM
from worker.engine.metrics.choice import choice_result
from worker.engine.metrics.choice_scores import ChoiceScores, score_choices
from worker.engine.metrics.generation import generate_greedy
from worker.engine.metrics.intervals import Estimate, bootstrap_mean, paired_bootstrap
from worker.engine.metrics.privacy import (
    MIN_K_FRACTION,
    loss_score,
    mia_auc,
    mia_auc_estimate,
    min_k_plus_plus_score,
    min_k_score,
    privleak_estimate,
    zlib_score,
)
from worker.engine.metrics.probes import qa_probe_scores
from worker.engine.metrics.qa import (
    answer_probability,
    exact_memorization,
    extraction_strength,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_balance,
    truth_ratio_open_unlearning,
    truth_ratio_true_better,
)
from worker.engine.metrics.text import (
    VERBMEM_CONTINUATION_TOKENS,
    VERBMEM_PREFIX_TOKENS,
    perplexity,
    split_passage,
    verbatim_memorization,
)
from worker.engine.metrics.token_scores import TokenScores, score_tokens
from worker.engine.metrics.values import SplitResult

# TOFU's answers are a sentence or two (well under 64 tokens for SmolLM2's tokenizer); open-unlearning allows 200
# new tokens. Generation is the expensive part of an evaluation, so Lethe's default is 64.
QA_MAX_NEW_TOKENS = 64
# An LM that has answered goes on with the template's next question; the answer ends there.
QA_STOP = "\n" + QA_TEMPLATE.split("{question}")[0].strip()

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")

# The score each kind is tracked by (training curves, stop target, utility floor, audits); higher = remembers more.
PRIMARY_METRIC = {"choice": "accuracy", "qa": "answer_probability", "text": "text_probability"}


def evaluate_split(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    batch_size: int,
    *,
    membership: bool = False,
    collect_hidden: bool = False,
    on_progress: Callable[[int], None] | None = None,
    seed: int = 0,
) -> tuple[SplitResult, ChoiceScores | None]:
    """Every metric of the rows' kind, and with `collect_hidden` the choice scores with hidden states a probe is
    fitted on (choice rows; qa rows' true-vs-perturbed answers, None when no row has perturbed answers; text: None).

    `membership`: choice rows get the MIA scores of their (prompt, answer) pairs too, one pass more (qa and text
    rows always have them). on_progress(n) after each batch of n sequences; they add up to `progress_total`.
    `seed` seeds the bootstrap intervals.
    """
    kind = kind_of(rows)
    if kind == "choice":
        choice_rows = [row for row in rows if isinstance(row, ChoiceRow)]
        scores = score_choices(
            lm, tokenizer, choice_rows, batch_size, collect_hidden=collect_hidden, on_pairs_scored=on_progress
        )
        result = choice_result(scores, seed)
        if membership:
            result.mia = mia_scores(lm, tokenizer, choice_rows, batch_size, on_progress=on_progress)
        return result, scores if collect_hidden else None
    if kind == "qa":
        qa_rows = [row for row in rows if isinstance(row, QARow)]
        result = evaluate_qa(lm, tokenizer, qa_rows, batch_size, on_progress=on_progress, seed=seed)
        return result, qa_probe_scores(lm, tokenizer, qa_rows, batch_size) if collect_hidden else None
    text_rows = [row for row in rows if isinstance(row, TextRow)]
    return evaluate_text(lm, tokenizer, text_rows, batch_size, on_progress=on_progress, seed=seed), None


def progress_total(rows: Sequence[Row], membership: bool = False) -> int:
    """The sum of what `evaluate_split` reports to on_progress: sequences passed through the LM."""
    kind = kind_of(rows)
    if kind == "choice":
        pairs = sum(len(row.choices) for row in rows if isinstance(row, ChoiceRow))
        return pairs + (len(rows) if membership else 0)
    if kind == "qa":
        return qa_progress_total([row for row in rows if isinstance(row, QARow)])
    return 2 * len(rows)


def qa_progress_total(rows: Sequence[QARow]) -> int:
    """The sum of what `evaluate_qa` reports to on_progress: every answer scored and generated, and every
    paraphrased and perturbed answer of the truth-ratio rows scored."""
    return 2 * len(rows) + sum(1 + len(row.perturbed_answers) for row in rows if _has_truth_ratio(row))


def evaluate_qa(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[QARow],
    batch_size: int,
    max_new_tokens: int = QA_MAX_NEW_TOKENS,
    on_progress: Callable[[int], None] | None = None,
    seed: int = 0,
) -> SplitResult:
    """answer_probability, rouge_l_recall, extraction_strength, exact_memorization and, when some rows have a
    paraphrased answer and perturbed answers, the truth-ratio metrics (None for the other rows), with the paper's
    R of every row in `SplitResult.truth_ratios` (what forget quality compares).

    Truth ratio R by the TOFU paper (`qa.truth_ratio`) and R' by open-unlearning's code
    (`qa.truth_ratio_open_unlearning`), each aggregated both ways on every split: TOFU reports max(0, 1 − R)
    (`truth_ratio`, `truth_ratio_open_unlearning`) for retain-type sets and min(R, 1/R) (`truth_ratio_balance`,
    `truth_ratio_balance_open_unlearning`) for the forget set.

    Greedy answers stop at EOS, at the template's next "Question:" or after `max_new_tokens`.
    on_progress(n) after each batch of n sequences; they add up to `qa_progress_total(rows)`. Each aggregate is the
    mean over the rows it applies to, with a bootstrap interval over those rows seeded by `seed`.
    """
    if not rows:
        raise ValueError("cannot evaluate an empty split")
    answers = [encode_pair(tokenizer, row.context, row.target) for row in rows]
    truth_rows = [i for i, row in enumerate(rows) if _has_truth_ratio(row)]
    # TOFU scores the paraphrased and the perturbed answers after the original question.
    alternatives = [
        encode_pair(tokenizer, rows[i].context, _as_target(answer))
        for i in truth_rows
        for answer in (rows[i].paraphrased_answer or "", *rows[i].perturbed_answers)
    ]
    scores = score_tokens(lm, tokenizer, answers + alternatives, batch_size, on_progress)
    generated = generate_greedy(
        lm, tokenizer, [context for context, _ in answers], max_new_tokens, batch_size, (QA_STOP,), on_progress
    )

    answer_scores = scores[: len(rows)]
    per_example: dict[str, list[float | None]] = {
        "answer_probability": [answer_probability(s) for s in answer_scores],
        "rouge_l_recall": [rouge_l_recall(row.answer, text) for row, text in zip(rows, generated, strict=True)],
        "extraction_strength": [extraction_strength(s) for s in answer_scores],
        "exact_memorization": [exact_memorization(s) for s in answer_scores],
    }
    ratios: dict[int, float] = {}
    if truth_rows:
        ratios_open_unlearning: dict[int, float] = {}
        position = len(rows)
        for i in truth_rows:
            end = position + 1 + len(rows[i].perturbed_answers)
            paraphrased, perturbed = scores[position], scores[position + 1 : end]
            ratios[i] = truth_ratio(paraphrased, perturbed)
            ratios_open_unlearning[i] = truth_ratio_open_unlearning(paraphrased, perturbed)
            position = end
        for suffix, by_row in (("", ratios), ("_open_unlearning", ratios_open_unlearning)):
            per_example[f"truth_ratio{suffix}"] = [
                _apply(truth_ratio_true_better, by_row.get(i)) for i in range(len(rows))
            ]
            per_example[f"truth_ratio_balance{suffix}"] = [
                _apply(truth_ratio_balance, by_row.get(i)) for i in range(len(rows))
            ]
    estimates = {name: _mean(values, seed) for name, values in per_example.items()}
    mia = _mia_from(tokenizer, answer_scores, MIN_K_FRACTION)
    truth_ratios = [ratios.get(i) for i in range(len(rows))] if truth_rows else []
    return SplitResult(estimates, per_example, mia, truth_ratios)


def evaluate_text(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[TextRow],
    batch_size: int,
    prefix_tokens: int = VERBMEM_PREFIX_TOKENS,
    continuation_tokens: int = VERBMEM_CONTINUATION_TOKENS,
    on_progress: Callable[[int], None] | None = None,
    seed: int = 0,
) -> SplitResult:
    """verbatim_memorization (None for passages under 2 tokens) and perplexity (the aggregate token-weighted).

    Passages longer than the LM's window are scored on their beginning. on_progress(n) after each batch of n
    sequences; they add up to 2 · len(rows). Intervals: bootstrap over rows seeded by `seed` (perplexity's of the
    ratio total NLL / total tokens, see `perplexity_estimate`).
    """
    if not rows:
        raise ValueError("cannot evaluate an empty split")
    pairs = [encode_pair(tokenizer, row.context, row.target) for row in rows]
    scores = score_tokens(lm, tokenizer, pairs, batch_size, on_progress)

    parts = [(i, split_passage(target, prefix_tokens, continuation_tokens)) for i, (_, target) in enumerate(pairs)]
    measured = [(i, part) for i, part in parts if part is not None]
    # The prompt is the passage's context (EOS) and prefix; the LM writes as many tokens as the true continuation.
    generated = generate_greedy(
        lm,
        tokenizer,
        [pairs[i][0] + prefix for i, (prefix, _) in measured],
        [len(continuation) for _, (_, continuation) in measured],
        batch_size,
        on_batch=on_progress,
    )
    if on_progress is not None and len(measured) < len(rows):
        on_progress(len(rows) - len(measured))

    verbmem: list[float | None] = [None] * len(rows)
    for (i, (_, continuation)), text in zip(measured, generated, strict=True):
        verbmem[i] = verbatim_memorization(tokenizer.batch_decode([continuation], skip_special_tokens=True)[0], text)
    # text_probability: a passage's length-normalized probability, the same quantity as qa's answer_probability;
    # the score a text split is tracked by during training.
    text_probabilities = [answer_probability(s) for s in scores]
    per_example: dict[str, list[float | None]] = {
        "verbatim_memorization": verbmem,
        "perplexity": [perplexity([s]) for s in scores],
        "text_probability": list(text_probabilities),
    }
    estimates = {
        "perplexity": perplexity_estimate(scores, seed),
        "text_probability": bootstrap_mean(text_probabilities, seed),
    }
    if measured:
        estimates["verbatim_memorization"] = _mean(verbmem, seed)
    return SplitResult(estimates, per_example, _mia_from(tokenizer, scores, MIN_K_FRACTION))


def evaluate_perplexity(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[TextRow],
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
    seed: int = 0,
) -> SplitResult:
    """Perplexity only (token-weighted aggregate, per passage per example): the utility check on general text."""
    pairs = [encode_pair(tokenizer, row.context, row.target) for row in rows]
    scores = score_tokens(lm, tokenizer, pairs, batch_size, on_progress)
    return SplitResult(
        {"perplexity": perplexity_estimate(scores, seed)}, {"perplexity": [perplexity([s]) for s in scores]}
    )


def perplexity_estimate(passages: Sequence[TokenScores], seed: int) -> Estimate:
    """`perplexity` with its interval: exp(mean NLL_i / mean tokens_i) over the passages i (= exp(total NLL / total
    tokens)), bootstrapped over passages with each passage's NLL and token count resampled together."""
    nll = [-float(scores.log_probs.sum()) for scores in passages]
    tokens = [float(len(scores)) for scores in passages]

    def token_weighted(means: np.ndarray) -> np.ndarray:
        # A resample of passages without tokens has no perplexity (NaN, dropped by the bootstrap).
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(means[1] > 0, np.exp(means[0] / means[1]), np.nan)

    estimate = paired_bootstrap([nll, tokens], token_weighted, seed)
    return Estimate(perplexity(passages), estimate.n, estimate.ci_low, estimate.ci_high, "bootstrap")


def target_probabilities(
    lm: CausalLM, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int
) -> list[float]:
    """Each row's target (answer or passage) probability, length-normalized: the cheap score tracked in training."""
    pairs = [encode_pair(tokenizer, row.context, row.target) for row in rows]
    return [answer_probability(s) for s in score_tokens(lm, tokenizer, pairs, batch_size)]


def primary_score(lm: CausalLM, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int) -> float:
    """The score a split is tracked by (higher = remembers more): accuracy for choice rows, the mean
    length-normalized target probability for qa and text rows. Teacher-forced, no generation."""
    scores = primary_row_scores(lm, tokenizer, rows, batch_size)
    return sum(scores) / len(scores)


def primary_row_scores(
    lm: CausalLM, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row], batch_size: int
) -> list[float]:
    """Each row's part of `primary_score`: 1.0 / 0.0 for a choice row answered right / wrong, the target's
    length-normalized probability for a qa or text row."""
    if not rows:
        raise ValueError("primary_score needs at least one row")
    if kind_of(rows) == "choice":
        choice_rows = [row for row in rows if isinstance(row, ChoiceRow)]
        return [float(correct) for correct in score_choices(lm, tokenizer, choice_rows, batch_size).correct]
    return target_probabilities(lm, tokenizer, rows, batch_size)


def mia_scores(
    lm: CausalLM,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Row],
    batch_size: int,
    k: float = MIN_K_FRACTION,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Per-example MIA scores (loss, zlib, min_k, min_k_plus_plus; higher = less like training data) of each
    row's (context, target) pair. `evaluate_qa` / `evaluate_text` return the same in `SplitResult.mia`."""
    pairs = [encode_pair(tokenizer, row.context, row.target) for row in rows]
    return _mia_from(tokenizer, score_tokens(lm, tokenizer, pairs, batch_size, on_progress), k)


def mia_metrics(member: Mapping[str, Sequence[float]], nonmember: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """mia_auc_<attack> for every attack: how well its scores tell members (e.g. forget) from non-members."""
    return {f"mia_auc_{attack}": mia_auc(member[attack], nonmember[attack]) for attack in MIA_ATTACKS}


def privleak_name(attack: str, reference_never_learned: bool) -> str:
    """`privleak_<attack>` when the reference never saw the forget set (MUSE's retrained model's role), else
    `privleak_vs_base_<attack>`: the reference is the base LM, which may have seen the rows in pretraining."""
    return f"privleak_{attack}" if reference_never_learned else f"privleak_vs_base_{attack}"


@dataclass(frozen=True)
class MembershipReference:
    """The MIA scores by attack of the same members and non-members under a reference LM (the base LM), and
    whether that LM never saw the forget set (the job fine-tuned the rows in first)."""

    members: Mapping[str, Sequence[float]]
    nonmembers: Mapping[str, Sequence[float]]
    never_learned: bool


def membership_metrics(
    members: Mapping[str, Sequence[float]],
    nonmembers: Mapping[str, Sequence[float]],
    seed: int,
    reference: MembershipReference | None = None,
) -> dict[str, Estimate]:
    """mia_auc_<attack> for every attack (stratified bootstrap interval), each followed, given a reference, by its
    PrivLeak against the reference's AUC of the same rows (paired interval; see `privacy.privleak`), named by
    `privleak_name`. PrivLeak is omitted where undefined (the reference recognises every member)."""
    metrics = {}
    for attack in MIA_ATTACKS:
        metrics[f"mia_auc_{attack}"] = mia_auc_estimate(members[attack], nonmembers[attack], seed)
        if reference is None:
            continue
        leak = privleak_estimate(
            members[attack], nonmembers[attack], reference.members[attack], reference.nonmembers[attack], seed
        )
        if not np.isnan(leak.value):
            metrics[privleak_name(attack, reference.never_learned)] = leak
    return metrics


def _mia_from(tokenizer: PreTrainedTokenizerBase, scores: Sequence[TokenScores], k: float) -> dict[str, list[float]]:
    # zlib compresses the target text as scored (decoded from its tokens, as open-unlearning does).
    texts = tokenizer.batch_decode([s.token_ids.tolist() for s in scores], skip_special_tokens=True)
    return {
        "loss": [loss_score(s) for s in scores],
        "zlib": [zlib_score(s, text) for s, text in zip(scores, texts, strict=True)],
        "min_k": [min_k_score(s, k) for s in scores],
        "min_k_plus_plus": [min_k_plus_plus_score(s, k) for s in scores],
    }


def _has_truth_ratio(row: QARow) -> bool:
    return bool(row.paraphrased_answer) and bool(row.perturbed_answers)


def _as_target(answer: str) -> str:
    """An alternative answer in the form `QARow.target` gives the true one."""
    return " " + answer


def _apply(function: Callable[[float], float], value: float | None) -> float | None:
    return None if value is None else function(value)


def _mean(values: Sequence[float | None], seed: int) -> Estimate:
    """The mean over the rows a metric applies to (not None), with its bootstrap interval over those rows."""
    return bootstrap_mean([v for v in values if v is not None], seed)
