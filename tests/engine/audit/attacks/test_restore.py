"""Parameter restoration (a diagnostic): restoring the component that forgot gives the answer logits back; restoring
value vectors touches down_proj only."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pydantic import ValidationError

from lethe.attacks import RestoreParams
from lethe.rows import Row
from tests.engine.audit.attacks.attack_checks import run_diagnostic
from tests.engine.audit.conftest import build_context, context_for
from worker.engine.audit.attacks.restore import component_parameters, restored_state
from worker.engine.audit.context import AuditContext
from worker.engine.audit.diagnostics import ANSWER_TOKENS, DiagnosticOutcome, Window
from worker.engine.audit.outcome import AttackNotApplicable
from worker.engine.lm.architecture import describe
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import lora_state

MODULES = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# Every component restore can put back (the default is the paper's: value_vectors only).
EVERY_COMPONENT = ["value_vectors", "mlp", "attention"]


def adapter_names(blocks: list[int]) -> list[str]:
    """Adapter parameter names as peft writes them for a Llama, on five modules of `blocks`."""
    return [
        f"base_model.model.model.layers.{block}.{module}.lora_{matrix}.default.weight"
        for block in blocks
        for module in MODULES
        for matrix in ("A", "B")
    ]


def test_components_select_modules_in_the_window(tiny_base: LoadedLM) -> None:
    llama = describe(tiny_base.lm)
    names = adapter_names([0, 1, 2, 11])
    window = Window(1, 2)
    value_vectors = component_parameters(llama, names, "value_vectors", window)
    assert value_vectors == {n for n in adapter_names([1, 2]) if "down_proj" in n} and len(value_vectors) == 4
    assert component_parameters(llama, names, "mlp", window) == {n for n in adapter_names([1, 2]) if ".mlp." in n}
    assert component_parameters(llama, names, "attention", window) == {
        n for n in adapter_names([1, 2]) if "self_attn" in n
    }
    # "layers.1." is block 1 only, not block 11.
    assert component_parameters(llama, names, "value_vectors", Window(1, 1)) == {
        n for n in adapter_names([1]) if "down_proj" in n
    }


def test_restored_state_takes_only_the_restored_parameters_from_before(tiny_base: LoadedLM) -> None:
    names = adapter_names([0, 1])
    forgotten = {name: torch.full((2,), 1.0) for name in names}
    before = {name: torch.full((2,), 0.0) for name in names}
    parameters = component_parameters(describe(tiny_base.lm), names, "value_vectors", Window(1, 1))
    state = restored_state(forgotten, before, parameters)
    assert {n for n in names if state[n] is before[n]} == parameters
    assert all(state[n] is forgotten[n] for n in names if n not in parameters)


def test_restore_defaults_to_the_papers_value_vectors() -> None:
    assert RestoreParams.model_validate({}).components == ["value_vectors"]


def test_old_groups_translate_to_components_and_windows() -> None:
    assert RestoreParams.model_validate({"groups": ["mlp", "per_layer"]}).model_dump() == {
        "components": ["mlp"],
        "window": 1,
        "layers": "all",
        "split": "forget_train",
    }
    translated = RestoreParams.model_validate({"groups": ["last_2", "last_4", "attention"], "split": "forget_heldout"})
    assert (translated.components, translated.window, translated.split) == (["attention"], 2, "forget_heldout")
    assert RestoreParams.model_validate({"groups": ["last_1"]}).components == ["value_vectors", "mlp", "attention"]
    with pytest.raises(ValidationError, match="old form"):
        RestoreParams.model_validate({"groups": ["mlp"], "window": 3})
    with pytest.raises(ValidationError, match="groups must be"):
        RestoreParams.model_validate({"groups": ["everything"]})


class _AdapterSpy:
    """The adapter parameters that differ from the forgotten ones at every LM-head call (one per forward call)."""

    def __init__(self, ctx: AuditContext) -> None:
        self.ctx = ctx
        self.calls: list[frozenset[str]] = []

    def __call__(self, _module: torch.nn.Module, _args: tuple) -> None:
        state = lora_state(self.ctx.peft_lm)
        self.calls.append(frozenset(n for n, v in state.items() if not torch.equal(v, self.ctx.forgotten[n])))


@contextlib.contextmanager
def spied(ctx: AuditContext) -> Iterator[_AdapterSpy]:
    spy = _AdapterSpy(ctx)
    handle = ctx.peft_lm.get_output_embeddings().register_forward_pre_hook(spy)
    try:
        yield spy
    finally:
        handle.remove()


def _krs(outcome: DiagnosticOutcome) -> dict[str, float | None]:
    return {v.name: None if v.krs is None else v.krs.value for v in outcome.variants}


@pytest.mark.parametrize(
    ("trained", "value_vectors", "mlp"),
    [
        # Forgetting in block 1's down_proj: its value vectors hold all of it.
        ("layers.1.mlp.down_proj", 1.0, 1.0),
        # Forgetting in block 1's gate and up projections (the coefficients' weights): the value vectors hold none
        # of it, the whole MLP all of it. A restore that put gate and up back with down_proj would say 1.0 twice.
        ("layers.1.mlp.gate_proj|layers.1.mlp.up_proj", 0.0, 1.0),
    ],
)
def test_restoring_value_vectors_differs_from_restoring_the_mlp(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]], trained: str, value_vectors: float, mlp: float
) -> None:
    ctx = build_context(taught_base, task_rows, forget_modules=trained.split("|"))
    with spied(ctx) as spy:
        outcome = run_diagnostic("restore", ctx, window=1, components=EVERY_COMPONENT)
    krs = _krs(outcome)
    assert krs["value_vectors@1-1"] == pytest.approx(value_vectors, abs=1e-6)
    assert krs["mlp@1-1"] == pytest.approx(mlp, abs=1e-6)
    # Block 0 and the attention did not forget: restoring them gives nothing back, exactly.
    for name in ("value_vectors@0-0", "mlp@0-0", "attention@0-0", "attention@1-1"):
        assert krs[name] == 0.0, name
    assert outcome.rows == len(ctx.forget_train) and outcome.rows_undefined == 0
    # Each variant's pass ran with exactly its component's parameters at their pre-forgetting values (the
    # parameters that differ from the forgotten adapter), in order, after the before and forgotten passes.
    names = list(ctx.forgotten)
    calls_per_pass = len(spy.calls) // (2 + len(outcome.variants))
    variant_calls = spy.calls[2 * calls_per_pass :]
    trained_names = {n for n in names if any(t in n for t in trained.split("|"))}
    for i, variant in enumerate(outcome.variants):
        expected = component_parameters(describe(ctx.peft_lm), names, variant.component, variant.window) & trained_names
        calls = set(variant_calls[i * calls_per_pass : (i + 1) * calls_per_pass])
        assert calls == {frozenset(expected)}, variant.name
        if variant.component == "value_vectors":
            assert all("mlp.down_proj" in n for n in expected)


def test_krs_equals_plain_forward_passes_of_the_restored_lm(
    taught_base: LoadedLM, task_rows: dict[str, list[Row]]
) -> None:
    """The variant's KRS against its own computation: one plain forward pass per row of the LM before forgetting,
    the forgotten LM and the LM with block 0's attention restored (no batching, no replay), MSEs by hand."""
    ctx = build_context(taught_base, task_rows)
    outcome = run_diagnostic("restore", ctx, window=1, components=["attention"])
    restored = {n: ctx.before[n] if "layers.0.self_attn" in n else v for n, v in ctx.forgotten.items()}

    def logits(state: dict[str, torch.Tensor], row: Row) -> torch.Tensor:
        context = ctx.tokenizer.encode(row.context, add_special_tokens=False)
        answer = ctx.tokenizer.encode(row.context + row.target, add_special_tokens=False)[len(context) :]
        answer = answer[:ANSWER_TOKENS]
        with ctx.using(state), torch.no_grad():
            full = ctx.peft_lm(input_ids=torch.tensor([context + answer])).logits[0].float()
        return full[len(context) - 1 : len(context) + len(answer) - 1]

    per_row = []
    for row in ctx.forget_train:
        before, forgotten, after = (logits(state, row) for state in (ctx.before, ctx.forgotten, restored))
        moved = ((before - forgotten) ** 2).mean()
        per_row.append(float(1 - ((before - after) ** 2).mean() / moved))
    expected = sum(per_row) / len(per_row)
    variant = next(v for v in outcome.variants if v.name == "attention@0-0")
    assert variant.krs is not None
    assert variant.krs.value == pytest.approx(expected, abs=0.02)
    assert variant.krs.n == len(ctx.forget_train)
    # Gradient ascent on every block: restoring block 0's attention brings back much, not all, of the logits.
    assert 0.5 < expected < 0.95


def test_an_adapter_without_a_component_skips_it(taught_base: LoadedLM, task_rows: dict[str, list[Row]]) -> None:
    ctx = build_context(taught_base, task_rows, lora_layers=[1])
    # The adapter sits on block 1 only: the window around block 0 (0-0) holds none of it.
    outcome = run_diagnostic("restore", ctx, window=1, components=EVERY_COMPONENT)
    assert [v.name for v in outcome.variants] == ["value_vectors@1-1", "mlp@1-1", "attention@1-1"]
    with pytest.raises(AttackNotApplicable, match="no component restores anything") as error:
        run_diagnostic("restore", ctx, window=1, layers=[0], components=EVERY_COMPONENT)
    reason = "no window measured holds an adapter parameter of this component"
    assert str(error.value).count(reason) == 3 and "value_vectors: " in str(error.value)


def test_restore_on_the_heldout_split(forgotten_context: AuditContext) -> None:
    outcome = run_diagnostic("restore", forgotten_context, window=1, components=["attention"], split="forget_heldout")
    assert outcome.split == "forget_heldout" and outcome.rows == len(forgotten_context.forget_heldout)
    assert [(v.window.first, v.window.last) for v in outcome.variants] == [(0, 0), (1, 1)]
    # The default 5-window covers both blocks of the tiny LM: every attention parameter, not the whole adapter.
    default = run_diagnostic("restore", forgotten_context, components=["attention"])
    assert [v.name for v in default.variants] == ["attention@0-1"]


def test_a_window_holding_the_whole_adapter_is_left_out(taught_base: LoadedLM, task_rows: dict[str, list[Row]]) -> None:
    """An adapter on down_proj alone (as RMU's down_proj variant): restoring all of it is the LM before forgetting."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"], task_type="CAUSAL_LM")
    peft_lm = get_peft_model(copy.deepcopy(taught_base.lm), config)
    before = lora_state(peft_lm)
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    ctx = context_for(taught_base, peft_lm, before, task_rows)
    outcome = run_diagnostic("restore", ctx, window=1, components=EVERY_COMPONENT)
    assert [v.name for v in outcome.variants] == ["value_vectors@0-0", "value_vectors@1-1", "mlp@0-0", "mlp@1-1"]
    assert outcome.skipped == {"attention": "no window measured holds an adapter parameter of this component"}
    # Down_proj is the MLP's only adapted module here: value vectors and the whole MLP restore the same thing.
    krs = _krs(outcome)
    assert krs["value_vectors@1-1"] == krs["mlp@1-1"] and krs["value_vectors@0-0"] == krs["mlp@0-0"]
    with pytest.raises(AttackNotApplicable, match="its windows hold every adapter parameter"):
        run_diagnostic("restore", ctx, components=EVERY_COMPONENT)
