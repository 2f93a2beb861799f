"""A tiny LM that knows the task, and forgotten adapters on it, for the attack tests.

The base LM is the tiny Llama fully trained on the synthetic task (so the LM "before forgetting" is the base
LM itself and the adapter's pre-forgetting state is LoRA's initialisation, B = 0). `build_context` then forgets
with a method on forget-train and returns the AuditContext an audit would get.

Every attack test runs twice, under fp32 and under bf16 autocast (LETHE_PRECISION; ids `test_x[fp32]`,
`test_x[bf16]`): a scenario must hold on either trajectory, not on the one this CPU happens to take.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from lethe.methods import METHODS
from lethe.rows import ChoiceRow, Row
from tests.engine.methods.helpers import teach
from tests.tiny_lm import CATEGORIES, synthetic_choice_rows
from worker.engine.audit.context import AuditContext
from worker.engine.audit.run import never_learned
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import LoraState, attach_lora, load_lora_state, lora_state
from worker.engine.methods.implementations import build_objective
from worker.engine.training.loop import Schedule, train
from worker.engine.training.objective import Objective

LIMIT = 64
PRECISIONS = ["fp32", "bf16"]


@pytest.fixture(scope="package", params=PRECISIONS)
def precision(request: pytest.FixtureRequest) -> Iterator[str]:
    """LETHE_PRECISION for this package's tests, each value in turn, and for the fixtures built under it.

    Package scope: pytest runs the package's tests under one value, then the other, and puts the variable back
    when the package is done, so no test outside it runs under bf16.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LETHE_PRECISION", request.param)
        yield request.param


@pytest.fixture(autouse=True)
def under_each_precision(precision: str) -> str:
    """Every attack test runs under both precisions, including those that use no fixture trained under one."""
    return precision


def teach_base(base: LoadedLM, rows: Sequence[Row], steps: int = 60) -> LoadedLM:
    """`base` fully trained on `rows`, as a base LM of its own."""
    lm = teach(base.lm, base.tokenizer, rows, steps)
    return LoadedLM(lm=lm, tokenizer=base.tokenizer, base_model="taught-tiny", device=base.device)


def context_for(
    base: LoadedLM, peft_lm: PeftModel, before: LoraState, rows: dict[str, list[Row]], retain_name: str = "tool"
) -> AuditContext:
    """The audit context of `peft_lm` (its adapter as it is now is the forgotten one) on rows forget_train,
    forget_heldout and retain (one retain set named `retain_name`)."""
    peft_lm.eval()
    return AuditContext(
        base=base,
        peft_lm=peft_lm,
        forgotten=lora_state(peft_lm),
        before=before,
        forget_train=rows["forget_train"],
        forget_heldout=rows["forget_heldout"],
        retain={retain_name: rows["retain"]},
        batch_size=8,
        seed=0,
        limit=LIMIT,
    )


@pytest.fixture(scope="session")
def task_rows() -> dict[str, list[Row]]:
    """forget_train / forget_heldout: rows whose answer is fruit; retain: rows whose answer is tool."""
    rows: list[Row] = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(96, seed=0)]
    fruit = [row for row in rows if row.target == " fruit"]
    tool = [row for row in rows if row.target == " tool"]
    return {"forget_train": fruit[:12], "forget_heldout": fruit[12:24], "retain": tool[:16]}


@pytest.fixture(scope="session")
def taught_base(
    tiny_lm_dir: Path, task_rows: dict[str, list[Row]], tmp_path_factory: pytest.TempPathFactory
) -> LoadedLM:
    """The tiny LM that knows the task (shared: tests must not modify it).

    One for both precisions: `teach` runs plain fp32 forward passes, never under autocast, from the tiny LM's fp32
    weights as saved (loaded under bf16 autocast, a base LM holds its blocks' linear weights rounded to bf16).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LETHE_PRECISION", "fp32")
        fp32_base = load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path_factory.mktemp("fp32-lm-cache"))
    return teach_base(fp32_base, [*task_rows["forget_train"], *task_rows["forget_heldout"], *task_rows["retain"]])


def build_context(
    base: LoadedLM,
    rows: dict[str, list[Row]],
    *,
    method: str = "gradient_ascent",
    params: dict[str, Any] | None = None,
    steps: int = 6,
    learning_rate: float = 1e-2,
    lora_layers: list[int] | None = None,
    forget_modules: Sequence[str] | None = None,
) -> AuditContext:
    """Forget rows["forget_train"] from `base` with `method` and return the audit's context.

    `lora_layers` puts the adapter on those blocks only; `forget_modules` (substrings of parameter names, e.g.
    "layers.1.", "mlp") lets forgetting train only the adapter parameters matching one of them.
    """
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(base.lm), rank=4, alpha=8, layers=lora_layers)
    before = lora_state(peft_lm)
    parsed = METHODS.get(method).parse({**(params or {}), "learning_rate": learning_rate})
    with training_only(peft_lm, forget_modules):
        train(
            peft_lm,
            base.tokenizer,
            build_objective(method, parsed, 0),
            rows["forget_train"],
            rows["retain"],
            Schedule(learning_rate=learning_rate, epochs=100, batch_size=8, max_steps=steps),
            seed=0,
            limit=LIMIT,
        )
    return context_for(base, peft_lm, before, rows)


@contextlib.contextmanager
def training_only(peft_lm: PeftModel, modules: Sequence[str] | None) -> Iterator[None]:
    """Within this block only the adapter parameters whose names contain one of `modules` train (None: all)."""
    frozen = [
        parameter
        for name, parameter in peft_lm.named_parameters()
        if "lora_" in name and modules is not None and not any(module in name for module in modules)
    ]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


@pytest.fixture(scope="package")
def forgotten_context(precision: str, taught_base: LoadedLM, task_rows: dict[str, list[Row]]) -> AuditContext:
    """Gradient ascent on forget-train, every block's adapter (shared: attacks must leave it as they found it).

    One per precision: forgetting trains under it.
    """
    return build_context(taught_base, task_rows)


@pytest.fixture(scope="session")
def mixed_task() -> dict[str, list[Row]]:
    """Forget rows about 20 of the 24 words, fruits and tools alike; retain rows about the other 4."""
    rows = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(200, seed=1)]
    retain_words = set(sorted(CATEGORIES)[::6])
    forget = [row for row in rows if row.prompt.split()[2] not in retain_words]
    retain = [row for row in rows if row.prompt.split()[2] in retain_words]
    return {"forget_train": forget[:16], "forget_heldout": forget[16:40], "retain": retain[:16]}


@pytest.fixture(scope="package")
def exactly_unlearned(precision: str, tiny_base: LoadedLM, mixed_task: dict[str, list[Row]]) -> AuditContext:
    """A forget job that fine-tuned first, then forgot exactly: forgetting returned the adapter to the base LM.

    The untaught tiny LM (the base) gets a LoRA adapter fine-tuned on the task's rows (the LM before forgetting);
    the forgotten adapter is that one with its B matrices zeroed, which is the never-learned control itself
    (`run.never_learned`). Forgetting did nothing but undo the fine-tune, so an attack recovers on the forgotten LM
    exactly what it teaches the control. One per precision: the fine-tune trains under it.
    """
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    train(
        peft_lm,
        tiny_base.tokenizer,
        Objective(),
        [*mixed_task["forget_train"], *mixed_task["forget_heldout"], *mixed_task["retain"]],
        [],
        Schedule(learning_rate=1e-2, epochs=40, batch_size=16, max_steps=40),
        seed=0,
        limit=LIMIT,
    )
    before = lora_state(peft_lm)
    control = never_learned(before)
    load_lora_state(peft_lm, control)
    return dataclasses.replace(context_for(tiny_base, peft_lm, before, mixed_task), control=control)
