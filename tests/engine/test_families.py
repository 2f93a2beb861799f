"""Every decoder family Lethe supports: its structure read from the module tree, and a forget job and an audit on a
tiny random LM of it (real transformers classes, tiny configs built on the fly), on CPU and, where there is one, on
CUDA."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers
from transformers.pytorch_utils import Conv1D

from lethe.attacks import Thresholds
from lethe.rows import ChoiceRow, Row
from lethe.specs import AttackChoice
from tests.tiny_lm import FAMILIES, build_tiny_family_lm, synthetic_choice_rows, task_corpus
from worker.engine.audit.attacks.quantize import fake_quantize_int8, quantized_lm
from worker.engine.audit.run import audit_context, run_audit, run_diagnostics
from worker.engine.forget.run import ForgetOutcome, ForgetPlan, run_forget
from worker.engine.lm.architecture import describe
from worker.engine.lm.blocks import block_outputs
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import attach_lora, attached_lora, lora_state
from worker.engine.methods.plugins import BlockNoise

# Per family: the LM class, the qualified name of its block list, its MLP output projection, its attention's value
# projection and whether that one is fused with q and k (checked against transformers' modeling code).
EXPECTED: dict[str, tuple[str, str, str, str, bool]] = {
    "llama": ("LlamaForCausalLM", "model.layers", "mlp.down_proj", "self_attn.v_proj", False),
    "mistral": ("MistralForCausalLM", "model.layers", "mlp.down_proj", "self_attn.v_proj", False),
    "qwen2": ("Qwen2ForCausalLM", "model.layers", "mlp.down_proj", "self_attn.v_proj", False),
    "qwen3": ("Qwen3ForCausalLM", "model.layers", "mlp.down_proj", "self_attn.v_proj", False),
    "gemma": ("GemmaForCausalLM", "model.layers", "mlp.down_proj", "self_attn.v_proj", False),
    "phi3": ("Phi3ForCausalLM", "model.layers", "mlp.down_proj", "self_attn.qkv_proj", True),
    "olmo": ("OlmoForCausalLM", "model.layers", "mlp.down_proj", "self_attn.v_proj", False),
    "gpt_neox": ("GPTNeoXForCausalLM", "gpt_neox.layers", "mlp.dense_4h_to_h", "attention.query_key_value", True),
    "gpt2": ("GPT2LMHeadModel", "transformer.h", "mlp.c_proj", "attn.c_attn", True),
}
HIDDEN = 32  # tests/tiny_lm.py's width


@pytest.fixture(scope="module", params=FAMILIES)
def family_base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedLM:
    """A tiny random LM of each family, saved and loaded as a base model is (shared: tests must not modify it)."""
    directory = build_tiny_family_lm(tmp_path_factory.mktemp(request.param), task_corpus(), request.param)
    return load_base_lm(f"tiny-{request.param}", f"path:{directory}", tmp_path_factory.mktemp("lm-cache"))


def family_of(base: LoadedLM) -> str:
    return base.base_model.removeprefix("tiny-")


def _out_features(module: torch.nn.Module) -> int:
    # Linear's weight is [out, in]; GPT-2's Conv1D's is [in, out].
    weight = module.weight
    return int(weight.shape[1] if isinstance(module, Conv1D) else weight.shape[0])


def test_the_structure_of_each_family_is_found(family_base: LoadedLM) -> None:
    lm_class, blocks_name, mlp_output, attention_value, fused = EXPECTED[family_of(family_base)]
    architecture = describe(family_base.lm)
    assert (architecture.lm_class, architecture.blocks_name, len(architecture.blocks)) == (lm_class, blocks_name, 2)
    assert family_base.lm.get_submodule(blocks_name) is architecture.blocks
    layout = architecture.layout
    assert (layout.mlp_output, layout.attention_value, layout.value_fused) == (mlp_output, attention_value, fused)
    for layer in range(2):
        block = architecture.block(layer)
        assert architecture.mlp_output(layer) is block.get_submodule(mlp_output)
        # The MLP's output projection writes to the residual stream; a fused q/k/v module computes three things.
        assert _out_features(architecture.mlp_output(layer)) == HIDDEN
        value_width = _out_features(architecture.attention_value(layer))
        assert value_width == 3 * HIDDEN if fused else value_width == HIDDEN
        assert architecture.mlp(layer) is block.get_submodule(layout.mlp)
        assert architecture.attention(layer) is block.get_submodule(layout.attention)
    with pytest.raises(ValueError, match="layer 2 does not exist"):
        architecture.block(2)


def test_adapter_parameters_map_to_their_block_and_module(family_base: LoadedLM) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. peft's "fan_in_fan_out is set to False but the target is Conv1D"
        peft_lm = attach_lora(copy.deepcopy(family_base.lm), rank=4, alpha=8)
    architecture = describe(peft_lm)
    names = list(lora_state(peft_lm))
    # Every linear layer of every block has an adapter: A and B per module per block.
    assert len(names) == 2 * 2 * len(architecture.linear_paths())
    assert sorted({architecture.block_of(name) for name in names}) == [0, 1]
    mlp_output = [name for name in names if architecture.in_module(name, architecture.layout.mlp_output)]
    assert len(mlp_output) == 2 * 2
    assert not any(architecture.in_module(name, architecture.layout.attention) for name in mlp_output)
    assert all(architecture.block_of(name) is None for name, _ in peft_lm.named_parameters() if "lm_head" in name)


def test_lora_on_some_layers_adapts_every_linear_layer_of_those_only(family_base: LoadedLM) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. peft's "fan_in_fan_out is set to False but the target is Conv1D"
        peft_lm = attach_lora(copy.deepcopy(family_base.lm), rank=4, alpha=8, layers=[1])
    architecture = describe(peft_lm)
    names = list(lora_state(peft_lm))
    assert {architecture.block_of(name) for name in names} == {1}
    adapted = {name.split(".lora_")[0].split(f"{architecture.blocks_name}.1.")[1] for name in names}
    assert adapted == set(architecture.linear_paths())


def test_hidden_state_l_plus_1_is_the_output_of_block_l(family_base: LoadedLM) -> None:
    """The numbering probes, RMU and RNA rely on (worker/engine/lm/blocks.py), in every family."""
    architecture = describe(family_base.lm)
    ids = family_base.tokenizer("The red apple is a fruit", return_tensors="pt").input_ids.to(family_base.device)
    with torch.no_grad(), block_outputs(architecture.block(0)) as captured:
        hidden_states = family_base.lm(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hidden_states) == 3 and torch.equal(captured[0], hidden_states[1])


def test_rna_noise_perturbs_the_requested_block(family_base: LoadedLM) -> None:
    lm = family_base.lm
    ids = family_base.tokenizer("The red apple is a fruit", return_tensors="pt").input_ids.to(family_base.device)
    with torch.no_grad():
        clean = lm(input_ids=ids, output_hidden_states=True).hidden_states
        with BlockNoise(std=1.0, layer=1)(lm):
            noisy = lm(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(noisy[1], clean[1]) and not torch.allclose(noisy[2], clean[2])


def test_quantize_rounds_every_linear_weight_of_the_blocks_per_output_channel(family_base: LoadedLM) -> None:
    peft_lm = attach_lora(copy.deepcopy(family_base.lm), rank=4, alpha=8)
    ids = family_base.tokenizer("The red apple is a fruit", return_tensors="pt").input_ids.to(family_base.device)
    weights: list[torch.Tensor] = []  # as each linear layer of the blocks runs, as [out, in]

    def record(layer: torch.nn.Module, _args: tuple) -> None:
        weight = layer.weight.detach().clone()
        weights.append(weight.T if isinstance(layer, Conv1D) else weight)

    with quantized_lm(peft_lm, fake_quantize_int8) as lm:
        # The base layers inside the LoRA layers: they run with the weight quantized_lm swapped in.
        handles = [
            module.register_forward_pre_hook(record)
            for name, module in describe(lm).blocks.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and ".lora_" not in name
        ]
        try:
            lm(input_ids=ids)
        finally:
            for handle in handles:
                handle.remove()
    assert len(weights) == 2 * len(describe(family_base.lm).linear_paths())
    for weight in weights:
        # Each output channel on its own symmetric int8 grid: w / (max|w_row| / 127) is an integer. A weight stored
        # in bf16 (the blocks' linear weights under bf16 autocast on a CPU: lm/block_weights.py) holds its grid
        # point rounded to bf16's 8 significant bits, the step too: an integer to within 2 of its 2^-8 parts.
        steps = weight.float() / (weight.float().abs().amax(dim=1, keepdim=True) / 127)
        rtol = 0.0 if weight.dtype == torch.float32 else 2 * 2**-8
        assert torch.allclose(steps, torch.round(steps), atol=1e-3, rtol=rtol)


def test_an_unsupported_layout_is_a_clear_error(tiny_base: LoadedLM) -> None:
    config = transformers.MixtralConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        num_local_experts=2,
        pad_token_id=0,
    )
    # A mixture of experts: its blocks have no MLP output projection.
    with pytest.raises(ValueError, match="unsupported LM MixtralForCausalLM: decoder block MixtralDecoderLayer"):
        describe(transformers.AutoModelForCausalLM.from_config(config))
    # A config that does not match the module tree: no list of as many blocks.
    lm = copy.deepcopy(tiny_base.lm)
    lm.config.num_hidden_layers = 3
    with pytest.raises(ValueError, match="unsupported LM LlamaForCausalLM: expected one list of its 3 decoder blocks"):
        describe(lm)


# The task's rows: fruit rows to forget, tool rows to retain.
_ROWS: list[Row] = [ChoiceRow.from_dict(row) for row in synthetic_choice_rows(64, seed=0)]
FORGET = [row for row in _ROWS if row.target == " fruit"]
RETAIN = {"tool": [row for row in _ROWS if row.target == " tool"][:8]}
FORGET_TRAIN, FORGET_HELDOUT = FORGET[:16], FORGET[16:24]


def forget(base: LoadedLM, method: str, probe: bool = False, **params: object) -> ForgetOutcome:
    """A short forget job of `method` on the task's fruit rows."""
    method_params = {"learning_rate": 1e-2, "batch_size": 8, "epochs": 3} | params
    plan = ForgetPlan(method=method, method_params=method_params, finetune=None, probe=probe, seed=0)
    return run_forget(base, plan, FORGET_TRAIN, FORGET_HELDOUT, RETAIN, lambda _stage, _fraction: None)


def moved(outcome: ForgetOutcome) -> set[str]:
    """The adapter parameters forgetting changed."""
    state = outcome.adapter.state
    return {name for name, t in state.items() if not torch.equal(t, outcome.before_forgetting[name])}


def check_forget_and_audit(base: LoadedLM) -> None:
    """A gradient ascent job with probes and an RMU job on the MLP output projections, then an audit of the
    gradient ascent adapter with relearn, probe and quantize attacks and the restore and patch diagnostics."""
    ascent = forget(base, "gradient_ascent", probe=True)
    architecture = describe(base.lm)
    assert ascent.forgetting.steps > 0
    assert all(t.device.type == base.device.type for t in ascent.adapter.state.values())
    assert {architecture.block_of(name) for name in moved(ascent)} == {0, 1}
    probes = [m for m in ascent.metrics if m.name == "probe_accuracy" and m.stage == "forgotten"]
    assert sorted({m.layer for m in probes}) == [0, 1, 2]  # the embeddings and each block

    # RMU's down_proj variant trains the MLP output projections of its adapted blocks only, in every family.
    rmu = forget(base, "rmu", layer=1, trained_modules="down_proj", epochs=2)
    rmu_architecture = describe(base.lm)
    trained = moved(rmu)
    assert trained and all(rmu_architecture.in_module(name, rmu_architecture.layout.mlp_output) for name in trained)
    assert {rmu_architecture.block_of(name) for name in trained} == {0, 1}

    with attached_lora(base.lm, ascent.adapter.config, ascent.adapter.state) as peft_lm:
        ctx = audit_context(
            base, peft_lm, ascent.before_forgetting, FORGET_TRAIN, FORGET_HELDOUT, RETAIN, 8, 0, finetuned=False
        )
        attacks = [
            AttackChoice(name="relearn", params={"examples": [2], "steps": 2, "evaluate_every": 2}),
            AttackChoice(name="probe", params={}),
            AttackChoice(name="quantize", params={"schemes": ["int8"]}),
        ]
        audited, skipped = run_audit(ctx, attacks, Thresholds.model_validate({}), lambda _stage, _fraction: None)
        assert [a.name for a in audited] == ["relearn", "probe", "quantize"] and skipped == []
        [probe] = [a for a in audited if a.name == "probe"]
        assert [v.name for v in probe.outcome.variants] == ["layer_0", "layer_1"]

        diagnostics = [
            AttackChoice(name="restore", params={"window": 1, "components": ["value_vectors", "mlp", "attention"]}),
            AttackChoice(name="patch", params={"window": 1}),
        ]
        done, skipped_diagnostics = run_diagnostics(ctx, diagnostics, lambda _stage, _fraction: None)
        assert skipped_diagnostics == []
        restore, patch = done
        components = ("value_vectors", "mlp", "attention")
        assert {v.name for v in restore.outcome.variants} == {f"{c}@{i}-{i}" for c in components for i in (0, 1)}
        patched = ("mlp_coefficients", "attention_output")
        assert {v.name for v in patch.outcome.variants} == {f"{c}@{i}-{i}" for c in patched for i in (0, 1)}
        # Forgetting moved the answer logits of every row measured, so every variant has a KRS.
        assert all(v.krs is not None for v in [*restore.outcome.variants, *patch.outcome.variants])
        # The audit left the forgotten adapter as it found it.
        assert all(torch.equal(t, ctx.forgotten[name]) for name, t in lora_state(ctx.peft_lm).items())


def test_a_forget_job_and_an_audit_run_on_each_family(family_base: LoadedLM) -> None:
    check_forget_and_audit(family_base)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_forget_job_and_an_audit_run_on_each_family_on_cuda(family_base: LoadedLM) -> None:
    assert family_base.device.type == "cuda"
    assert next(family_base.lm.parameters()).is_cuda
    check_forget_and_audit(family_base)
