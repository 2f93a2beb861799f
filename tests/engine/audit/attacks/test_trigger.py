"""Forget-token triggers: forget words in retain queries hurt the forgotten LM only, and only forget words do.

The scenario follows Dang et al.: forget rows are about half of the fruits, retain rows about the other half, so
forgetting must tie "not fruit" to the forget fruits' words themselves. Put three words of a forget prompt
("The red pear") before a retained fruit's prompt and the forgotten LM answers wrongly; the LM before forgetting
answers right, and words of retained fruits' prompts do the forgotten LM no harm.

The tiny tokenizer splits words into pieces, so the two halves share none ("pea" would tie peach to pear, and
apple's first piece is the " a" every prompt ends with: apple is retained). The forgetting is shallow in a known
way (see `scenarios.finetuned_context`): wrong answers to forget-train, right ones to retain, nothing else; no
row it trains on has forget words before a retained fruit. Forgetting with NPO showed the damage too, but how
much changed with the precision and the seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import pytest
import torch

from lethe.attacks import Thresholds, TriggerParams
from lethe.rows import ChoiceRow, QARow, Row, TextRow
from tests.engine.audit.attacks.attack_checks import run_checked
from tests.engine.audit.attacks.scenarios import finetuned_context, wrong
from tests.tiny_lm import CATEGORIES, synthetic_choice_rows, synthetic_qa_rows, synthetic_text_rows
from worker.engine.audit.attacks.trigger import insert_words, trigger
from worker.engine.audit.context import AuditContext
from worker.engine.audit.outcome import judge
from worker.engine.lm.load import LoadedLM

THRESHOLDS = Thresholds()


# No tokenizer piece in common with the retained fruits (apple, grape, kiwi, lemon, mango, plum).
FORGET_FRUITS = {"cherry", "fig", "lime", "melon", "peach", "pear"}


@pytest.fixture(scope="module")
def fruit_rows() -> dict[str, list[Row]]:
    """forget_train / forget_heldout about 6 fruits; retain (and other_retain) about the 6 others."""
    rows = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(300, seed=2)]
    fruits = {word for word, category in CATEGORIES.items() if category == " fruit"}
    forget = [row for row in rows if row.prompt.split()[2] in FORGET_FRUITS]
    retain = [row for row in rows if row.prompt.split()[2] in fruits - FORGET_FRUITS]
    return {
        "forget_train": forget[:16],
        "forget_heldout": forget[16:28],
        "retain": retain[:16],
        "other_retain": retain[40:56],
    }


@pytest.fixture(scope="module")
def fruits_context(precision: str, taught_base: LoadedLM, fruit_rows: dict[str, list[Row]]) -> AuditContext:
    """Forget fruits answered "tool", retained fruits "fruit" (one per precision: forgetting trains under it)."""
    trained = [*map(wrong, fruit_rows["forget_train"]), *fruit_rows["retain"]]
    ctx = finetuned_context(taught_base, fruit_rows, trained, steps=100, learning_rate=3e-3)
    return dataclasses.replace(ctx, retain={"other fruits": fruit_rows["retain"]})


def test_forget_words_in_retain_queries_damage_the_forgotten_lm_only(fruits_context: AuditContext) -> None:
    outcome, _ = run_checked(trigger, fruits_context, TriggerParams(words=3, position="prefix"))

    (variant,) = outcome.variants
    assert (outcome.metric, outcome.split, outcome.effect) == ("accuracy", "retain", "damage")
    assert variant.name == "other fruits"
    assert variant.before == variant.control == variant.after_forgetting == 1.0
    assert variant.after_attack <= 0.5
    judgement = judge("trigger", outcome, THRESHOLDS, seed=0)
    assert judgement.worst.excess_drop is not None and judgement.worst.excess_drop >= 0.5
    assert judgement.verdict == "shallow"


def test_words_the_forget_job_kept_trigger_nothing(
    fruits_context: AuditContext, fruit_rows: dict[str, list[Row]]
) -> None:
    """The same adapter and attack, with prompts of retained fruits as the inserted words."""
    ctx = dataclasses.replace(fruits_context, forget_train=fruit_rows["other_retain"])

    outcome, _ = run_checked(trigger, ctx, TriggerParams(words=3, position="prefix"))

    judgement = judge("trigger", outcome, THRESHOLDS, seed=0)
    assert judgement.worst.excess_drop is not None and judgement.worst.excess_drop < 0.05
    assert judgement.verdict == "robust"


def test_forgetting_towards_the_retain_answer_shows_no_damage(forgotten_context: AuditContext) -> None:
    """Gradient ascent taught "tool" for fruit prompts, which is the (tool) retain rows' answer anyway."""
    outcome, _ = run_checked(trigger, forgotten_context, TriggerParams(words=3, position="prefix"))

    judgement = judge("trigger", outcome, THRESHOLDS, seed=0)
    assert judgement.worst.excess_drop is not None and judgement.worst.excess_drop <= 0
    assert judgement.verdict == "robust"


def test_insert_words_before_or_after_keeping_trailing_whitespace() -> None:
    assert insert_words("The big saw is a", "The red apple", "prefix") == "The red apple The big saw is a"
    assert insert_words("The big saw is a", "The red apple", "suffix") == "The big saw is a The red apple"
    assert insert_words("Answer: ", "apple", "suffix") == "Answer: apple "


def test_every_retain_set_is_a_variant_scored_by_its_kind(forgotten_context: AuditContext) -> None:
    """Choice, qa and text retain sets; text rows get the words as their context, wherever `position` says."""
    retain: dict[str, list[Row]] = {
        "tool": list(forgotten_context.retain["tool"]),
        "facts": [QARow.from_dict(row) for row in synthetic_qa_rows(6, seed=1)],
        "passages": [TextRow.from_dict(row) for row in synthetic_text_rows(6, seed=1)],
    }
    ctx = dataclasses.replace(forgotten_context, retain={**retain, "empty": []})

    outcomes = {
        position: run_checked(trigger, ctx, TriggerParams(words=2, position=position))[0]
        for position in ("prefix", "suffix")
    }

    prefix, suffix = outcomes["prefix"], outcomes["suffix"]
    assert prefix.metric == "accuracy/answer_probability/text_probability"
    assert [variant.name for variant in prefix.variants] == ["tool", "facts", "passages"]
    for name, rows in retain.items():
        variant = next(variant for variant in prefix.variants if variant.name == name)
        assert variant.after_forgetting == ctx.score(rows)
        with ctx.before_lm():
            assert variant.before == ctx.score(rows)
        if name != "tool":
            assert 0 < variant.after_attack < 1 and variant.after_attack != variant.after_forgetting
    assert prefix.variants[2] == suffix.variants[2]
    assert prefix.variants[1] != suffix.variants[1]


def test_no_retain_rows_is_an_error(forgotten_context: AuditContext) -> None:
    with pytest.raises(ValueError, match="retain rows"):
        trigger(dataclasses.replace(forgotten_context, retain={"empty": []}), TriggerParams())


def _inserted(text: str, words: str, position: str) -> str:
    """`words` before the text, or after it and before its trailing whitespace (the module's documented rule)."""
    if position == "prefix":
        return f"{words} {text}"
    stripped = text.rstrip()
    return f"{stripped} {words}{text[len(stripped) :]}"


def _passage_probability(lm: Any, tokenizer: Any, words: str, passages: list[TextRow]) -> float:
    """Mean over passages of exp(mean log p(passage token | words, earlier tokens)), the passage read as " text"."""
    values = []
    for row in passages:
        context = tokenizer.encode(words, add_special_tokens=False)
        ids = tokenizer.encode(f"{words} {row.text}", add_special_tokens=False)
        with torch.no_grad():
            log_probs = lm(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        target = [float(log_probs[t - 1, ids[t]]) for t in range(len(context), len(ids))]
        values.append(math.exp(sum(target) / len(target)))
    return sum(values) / len(values)


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_control_and_attack_score_the_retain_rows_with_the_forget_words_inserted(
    forgotten_context: AuditContext, position: Literal["prefix", "suffix"]
) -> None:
    """One forget-train row, so every retain row gets its first two words: each variant's control (LM before
    forgetting) and after_attack (forgotten LM) equal the test's own insertion and scoring of the triggered rows."""
    forget_row = forgotten_context.forget_train[0]
    assert isinstance(forget_row, ChoiceRow)
    words = " ".join(forget_row.prompt.split()[:2])
    tool = [row for row in forgotten_context.retain["tool"] if isinstance(row, ChoiceRow)]
    facts = [QARow.from_dict(row) for row in synthetic_qa_rows(6, seed=1)]
    passages = [TextRow.from_dict(row) for row in synthetic_text_rows(6, seed=1)]
    ctx = dataclasses.replace(
        forgotten_context, forget_train=[forget_row], retain={"tool": tool, "facts": facts, "passages": passages}
    )

    outcome, _ = run_checked(trigger, ctx, TriggerParams(words=2, position=position))

    triggered_tool = [dataclasses.replace(r, prompt=_inserted(r.prompt, words, position)) for r in tool]
    triggered_facts = [dataclasses.replace(r, question=_inserted(r.question, words, position)) for r in facts]

    def expected() -> dict[str, float]:
        return {
            "tool": ctx.score(triggered_tool),
            "facts": ctx.score(triggered_facts),
            "passages": _passage_probability(ctx.peft_lm, ctx.tokenizer, words, passages),
        }

    with ctx.before_lm():
        control = expected()
    after_attack = expected()
    variants = {variant.name: variant for variant in outcome.variants}
    for name in ("tool", "facts", "passages"):
        assert variants[name].control == pytest.approx(control[name], rel=1e-5), name
        assert variants[name].after_attack == pytest.approx(after_attack[name], rel=1e-5), name
    # The inserted words change the continuous scores before forgetting too, so the control is not the clean score
    # (measured: facts' answer probability 0.74 -> 0.70 prefix, 0.72 suffix; passages' 4.5e-4 -> 2.7e-4).
    facts_variant, passages_variant = variants["facts"], variants["passages"]
    assert facts_variant.control is not None and facts_variant.before is not None
    assert passages_variant.control is not None and passages_variant.before is not None
    assert abs(facts_variant.control - facts_variant.before) > 0.01
    assert abs(passages_variant.control - passages_variant.before) > 0.1 * passages_variant.before
