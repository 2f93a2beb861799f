"""Paraphrase: the forgotten task asked in other words.

Forgetting that only suppresses the trained wording leaves the knowledge reachable through another one: Lynch et
al. ("Eight methods to evaluate robust unlearning in LLMs", arXiv 2402.16835) still extract it from an unlearned
LM with prompts in other forms (other languages, adversarial prompts), and TOFU (arXiv 2401.06121) scores
paraphrased questions alongside the originals. Variants:

- qa rows, `paraphrased_question`: each row that has a paraphrased question is asked it, and scored on its
  paraphrased answer if it has one (else its answer). Rows without a paraphrase are left out of this variant.
- choice rows, `retemplated`: the prompt in another wording. A prompt of the form "Question: X\\nAnswer:"
  (QA_TEMPLATE, whitespace-tolerant) becomes "X\\nThe answer is:"; any other prompt, e.g. a sentence to complete,
  is quoted in a question: 'Question: How does "P" continue?\\nAnswer:'. The choices follow it as given, and
  the prompt's trailing whitespace is kept, so they attach as they did.
- choice rows, `lettered_shuffled`: a lettered multiple-choice question, choices in a seeded shuffled order
  (seed = the audit's seed and the row's index): "Question: X\\nA. c1\\nB. c2\\n…\\nAnswer:" (X the question
  of a QA-form prompt, else the prompt itself; each choice stripped of surrounding whitespace), scored as the
  choices " A", " B", … with the answer the true choice's letter. At most 26 choices.

Each variant has its own references: before = the LM before forgetting on the paraphrased rows (what the LM knew
in that wording), after_forgetting = the forgotten LM on the same rows in their original wording (what
forgetting left, as the forget job measured it), after_attack = the forgotten LM on the paraphrased rows. So a
variant recovers when the forgotten LM answers the paraphrase better than the original, relative to what the
paraphrase was worth before. The outcome's own before / after_forgetting are the whole split's, original wording.

For choice rows judge() counts after_forgetting from chance at the lowest (AttackOutcome.chance): a wording the
LM never understood sits at chance before and after, and an LM forgotten below chance would otherwise show full
"recovery" on it. Such a variant has no recovery rate.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

from lethe.attacks import AttackParams, ParaphraseParams
from lethe.rows import QA_TEMPLATE, ChoiceRow, QARow, Row
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import AttackNotApplicable, AttackOutcome, RowScores, Variant

# "Question: X\nAnswer:" with any whitespace around its parts; X may span lines.
_QA_FORM = re.compile(r"\s*Question:\s*(?P<question>.+?)\s*\n\s*Answer:\s*", re.DOTALL)


def paraphrase(ctx: AuditContext, params: AttackParams) -> AttackOutcome:
    """Scores of the forget split asked in other wordings, each against its own before / after_forgetting."""
    if not isinstance(params, ParaphraseParams):
        raise TypeError(f"paraphrase takes ParaphraseParams, got {type(params).__name__}")
    rows = ctx.split(params.split)
    # variant name -> (the rows it asks in their original wording, the same rows paraphrased)
    asked: dict[str, tuple[Sequence[Row], list[Row]]]
    if ctx.kind == "qa":
        qa_rows = [(row, row.paraphrased_question) for row in rows if isinstance(row, QARow)]
        with_paraphrase = [(row, question) for row, question in qa_rows if question]
        if not with_paraphrase:
            raise AttackNotApplicable(f"no row of {params.split} has a paraphrased_question to ask")
        asked = {
            "paraphrased_question": (
                [row for row, _ in with_paraphrase],
                [_paraphrased(row, question) for row, question in with_paraphrase],
            )
        }
    elif ctx.kind == "choice":
        choice_rows = [row for row in rows if isinstance(row, ChoiceRow)]
        asked = {
            "retemplated": (rows, [retemplated(row) for row in choice_rows]),
            "lettered_shuffled": (
                rows,
                [lettered(row, random.Random(f"{ctx.seed}/paraphrase/{i}")) for i, row in enumerate(choice_rows)],
            ),
        }
    else:
        raise ValueError(f"paraphrase applies to choice and qa forget sets, not {ctx.kind}")

    # Each variant's paraphrased rows twice, and a variant's own original rows when they are a part of the split
    # (qa rows without a paraphrase are left out); the whole split's two scores are the audit's shared ones.
    passes = 2 * len(asked) + sum(len(originals) != len(rows) for originals, _ in asked.values())
    done = 0

    def score(scored_rows: Sequence[Row]) -> RowScores:
        nonlocal done
        value = ctx.score(scored_rows)
        done += 1
        ctx.on_progress(done / passes)
        return value

    before = ctx.reference_score(rows, "before")
    with ctx.before_lm():
        before_paraphrased = {name: score(paraphrased) for name, (_, paraphrased) in asked.items()}
    after_forgetting = ctx.reference_score(rows, "forgotten")
    variants = [
        Variant(
            name,
            after_attack=score(paraphrased),
            before=before_paraphrased[name],
            after_forgetting=after_forgetting if len(originals) == len(rows) else score(originals),
        )
        for name, (originals, paraphrased) in asked.items()
    ]
    return ctx.outcome(params.split, rows, before, after_forgetting, variants)


def _paraphrased(row: QARow, question: str) -> QARow:
    """The row asked `question` (its paraphrased one) and answered with its paraphrased answer, if it has one."""
    return QARow(question=question, answer=row.paraphrased_answer or row.answer)


def _question(prompt: str) -> str | None:
    """X of a prompt "Question: X\\nAnswer:", else None."""
    match = _QA_FORM.fullmatch(prompt)
    return match.group("question") if match else None


def retemplated(row: ChoiceRow) -> ChoiceRow:
    """The row with its prompt in another wording (see the module docstring)."""
    trailing = row.prompt[len(row.prompt.rstrip()) :]
    question = _question(row.prompt)
    if question is not None:
        prompt = f"{question}\nThe answer is:"
    else:
        prompt = QA_TEMPLATE.format(question=f'How does "{row.prompt.strip()}" continue?')
    return ChoiceRow(prompt=prompt + trailing, choices=row.choices, answer=row.answer)


def lettered(row: ChoiceRow, rng: random.Random) -> ChoiceRow:
    """The row as a lettered multiple-choice question, its choices in `rng`'s shuffled order."""
    if len(row.choices) > len(string.ascii_uppercase):
        raise ValueError(f"a lettered question takes at most 26 choices, this row has {len(row.choices)}")
    order = list(range(len(row.choices)))
    rng.shuffle(order)
    letters = string.ascii_uppercase[: len(order)]
    question = _question(row.prompt) or row.prompt.strip()
    listed = "\n".join(f"{letter}. {row.choices[i].strip()}" for letter, i in zip(letters, order, strict=True))
    return ChoiceRow(
        prompt=f"Question: {question}\n{listed}\nAnswer:",
        choices=tuple(f" {letter}" for letter in letters),
        answer=order.index(row.answer),
    )
