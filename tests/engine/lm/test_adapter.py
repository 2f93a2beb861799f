"""The adapter format: exported in PEFT format with a model card, archived reproducibly, opened again (safetensors
only, the same adapter before forgetting)."""

import copy
import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lethe.forgetting import Forgetting, ScoreRise
from tests.engine.forget.test_run import FORGET_HELDOUT, FORGET_TRAIN, Run, plan
from tests.engine.lm.test_lora import assert_pristine
from tests.tiny_lm import stored_like
from worker.engine.lm.adapter import (
    adapter_archive,
    base_model_reference,
    export_adapter,
    library_versions,
    model_card,
    opened_adapter,
    opened_adapter_archive,
)
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import attached_lora, carries_lora, lora_state
from worker.engine.metrics.choice_scores import score_choices
from worker.engine.metrics.values import CurvePoint, MetricValue

MISSED = Forgetting(
    "accuracy", 0.55, 0.76, False, "max_steps", 20, (ScoreRise("forget_heldout", 0.64, 0.80, 0.66, 0.89),)
)
PROVENANCE = {
    "method": "gradient_ascent",
    "params": {"learning_rate": 1e-3},
    "seed": 0,
    "data_sha256": {"forget": "ab" * 32},
}


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft vs transformers
def test_exported_adapter_loads_with_peft_and_reproduces_the_scores(tiny_base: LoadedLM, tiny_lm_dir, tmp_path) -> None:
    run = Run(tiny_base, plan("gradient_ascent", probe=False, max_steps=3, stop_at_target=False))
    splits = {"forget_train": FORGET_TRAIN, "forget_heldout": FORGET_HELDOUT}
    with attached_lora(tiny_base.lm, run.outcome.adapter.config, run.outcome.adapter.state) as peft_lm:
        out_dir = export_adapter(
            peft_lm,
            tmp_path / "adapter",
            "tiny-base",
            run.outcome.metrics,
            PROVENANCE,
            base_model_source=f"path:{tiny_lm_dir}",
            forgetting=run.outcome.forgetting,
            curves=run.outcome.curves,
        )
        expected = {split: score_choices(peft_lm, tiny_base.tokenizer, rows, 16) for split, rows in splits.items()}

    assert {p.name for p in out_dir.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_lm_dir)
    assert config["peft_type"] == "LORA"

    fresh_base = load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path / "cache").lm
    # The adapter really changed the LM: the base alone scores differently.
    base_only = score_choices(fresh_base, tiny_base.tokenizer, FORGET_TRAIN, 16)
    difference = np.subtract(base_only.loglikelihoods, expected["forget_train"].loglikelihoods)
    assert np.abs(difference).max() > 1e-3

    reloaded = PeftModel.from_pretrained(fresh_base, out_dir)
    for split, rows in splits.items():
        actual = score_choices(reloaded, tiny_base.tokenizer, rows, 16)
        np.testing.assert_allclose(actual.loglikelihoods, expected[split].loglikelihoods, atol=1e-5)
        assert actual.accuracy == run.value("forgotten", split, "accuracy")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft vs transformers
def test_auto_peft_resolves_the_base_from_the_adapter_alone_offline(
    tiny_base: LoadedLM, tiny_lm_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter exported against a `path:` source names that directory: AutoPeftModelForCausalLM loads base and
    adapter from the adapter directory alone, with the hub unreachable, and computes Lethe's logits."""
    run = Run(tiny_base, plan("gradient_ascent", probe=False, finetune=None, max_steps=2, stop_at_target=False))
    input_ids = [torch.tensor([tiny_base.tokenizer.encode(row.context + row.target)]) for row in FORGET_TRAIN[:3]]
    with attached_lora(tiny_base.lm, run.outcome.adapter.config, run.outcome.adapter.state) as peft_lm:
        out_dir = export_adapter(
            peft_lm,
            tmp_path / "adapter",
            "tiny-base",
            run.outcome.metrics,
            PROVENANCE,
            base_model_source=f"path:{tiny_lm_dir}",
            forgetting=run.outcome.forgetting,
            curves=run.outcome.curves,
        )
        with torch.no_grad():
            expected = [peft_lm(input_ids=ids).logits for ids in input_ids]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # nothing cached to fall back on

    loaded = stored_like(AutoPeftModelForCausalLM.from_pretrained(str(out_dir)), tiny_base.lm)
    for ids, logits in zip(input_ids, expected, strict=True):
        with torch.no_grad():
            actual = loaded(input_ids=ids).logits
            base_only = tiny_base.lm(input_ids=ids).logits
        torch.testing.assert_close(actual, logits, rtol=0, atol=1e-5)
        assert (logits - base_only).abs().max() > 1e-4  # the adapter is on: the base alone differs


@pytest.mark.parametrize(
    ("source", "reference", "revision"),
    [
        ("hf:HuggingFaceTB/SmolLM2-135M@" + "a" * 40, "HuggingFaceTB/SmolLM2-135M", "a" * 40),
        ("path:/models/llama", "/models/llama", None),
        ("bundled:smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
    ],
)
def test_the_base_an_adapter_names_resolves_outside_lethe(source: str, reference: str, revision: str | None) -> None:
    assert base_model_reference(source) == (reference, revision)


def test_an_unknown_source_names_no_base() -> None:
    with pytest.raises(ValueError, match="unsupported base LM source 'ftp:x'"):
        base_model_reference("ftp:x")


def test_a_hub_source_pins_the_revision_in_adapter_config_and_card(
    tiny_base: LoadedLM, saved_adapter, tmp_path
) -> None:
    directory, _ = saved_adapter
    lm = PeftModel.from_pretrained(copy.deepcopy(tiny_base.lm), str(directory))
    source = "hf:org/tiny@" + "c" * 40
    out_dir = export_adapter(
        lm, tmp_path / "out", "tiny-hub", [], PROVENANCE, base_model_source=source, forgetting=MISSED, curves=[]
    )
    config = json.loads((out_dir / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("org/tiny", "c" * 40)
    card = ModelCard.load(out_dir / "README.md")
    assert card.data.base_model == "org/tiny" and card.data.base_model_revision == "c" * 40
    assert card.data.library_name == "peft"


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft vs transformers
def test_an_adapter_trained_against_the_finetuned_reference_exports_without_it(
    tiny_base: LoadedLM, tiny_lm_dir, tmp_path
) -> None:
    """NPO with retain-KL after a fine-tune holds the fine-tuned adapter in a second slot while it trains; the
    delivered adapter is the trained one alone, and plain peft on the base LM reproduces the engine's LM exactly."""
    run = Run(tiny_base, plan("npo", probe=False, max_steps=3, stop_at_target=False, retain_kl_weight=1.0))
    input_ids = torch.tensor([tiny_base.tokenizer.encode(row.context + row.target) for row in FORGET_TRAIN[:1]])
    with attached_lora(tiny_base.lm, run.outcome.adapter.config, run.outcome.adapter.state) as peft_lm:
        out_dir = export_adapter(
            peft_lm,
            tmp_path / "adapter",
            "tiny-base",
            run.outcome.metrics,
            PROVENANCE,
            base_model_source="path:/models/tiny",
            forgetting=run.outcome.forgetting,
            curves=run.outcome.curves,
        )
        with torch.no_grad():
            expected = peft_lm(input_ids=input_ids).logits

    assert sorted(p.name for p in out_dir.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    saved = load_file(out_dir / "adapter_model.safetensors")
    assert saved and not any("reference" in key for key in saved)
    assert len(saved) == len(run.outcome.before_forgetting)

    # The base as the engine's is stored (its blocks' linear weights in bf16 where loaded under bf16 autocast).
    base = stored_like(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), tiny_base.lm)
    reloaded = PeftModel.from_pretrained(base, out_dir)
    with torch.no_grad():
        actual, before = reloaded(input_ids=input_ids).logits, tiny_base.lm(input_ids=input_ids).logits
    assert torch.equal(actual, expected)
    assert (actual - before).abs().max() > 1e-3


def test_model_card_lists_forgetting_metrics_with_intervals_curves_and_provenance(
    tiny_base: LoadedLM, tmp_path
) -> None:
    run = Run(tiny_base, plan("random_label", probe=True, finetune=None, max_steps=1, stop_at_target=False))
    as_dicts = [m.__dict__ for m in run.outcome.metrics]  # plain dicts are accepted too
    with attached_lora(tiny_base.lm, run.outcome.adapter.config, run.outcome.adapter.state) as peft_lm:
        out_dir = export_adapter(
            peft_lm,
            tmp_path,
            "tiny-base",
            as_dicts,
            PROVENANCE,
            base_model_source="path:/models/tiny",
            forgetting=run.outcome.forgetting,
            curves=run.outcome.curves,
        )
    card = (out_dir / "README.md").read_text()
    assert f"## Forgetting\n\n{run.outcome.forgetting.summary()}\n" in card
    assert "| stage | split | metric | layer | value | n | 95% interval |" in card
    for m in run.outcome.metrics:
        if m.name == "accuracy":
            row = f"| {m.stage} | {m.split} | accuracy |  | {m.value:.4f} | {m.n} | {m.ci_low:.4f} to {m.ci_high:.4f} |"
            assert row in card
    assert "| base | forget_heldout | probe_accuracy | 2 |" in card
    [point] = [p for p in run.outcome.curves if p.split == "forget_train"]  # one step: one point
    assert f"| forget_train | accuracy | 1 | {point.value:.4f} |" in card
    provenance = json.loads(card.split("```json\n")[1].split("\n```")[0])
    assert provenance["method"] == "gradient_ascent"
    assert provenance["data_sha256"] == PROVENANCE["data_sha256"]
    assert provenance["library_versions"] == library_versions()
    assert {"python", "torch", "transformers", "peft"} <= set(provenance["library_versions"])


def test_an_opened_adapter_holds_the_saved_weights_on_the_base_lm_until_closed(
    tiny_base: LoadedLM, saved_adapter
) -> None:
    directory, before = saved_adapter
    weights = {name: t.clone() for name, t in tiny_base.lm.state_dict().items()}
    with opened_adapter(tiny_base, directory, before) as peft_lm:
        assert not peft_lm.training
        assert any(not torch.equal(value, before[name]) for name, value in lora_state(peft_lm).items())
        assert carries_lora(tiny_base.lm)  # attached to the base LM itself, not to a copy
    assert_pristine(tiny_base.lm, weights)


def test_open_adapter_refuses_pickles_and_a_foreign_before_state(tiny_base: LoadedLM, saved_adapter) -> None:
    directory, before = saved_adapter
    weights = {name: t.clone() for name, t in tiny_base.lm.state_dict().items()}
    (directory / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pickled files \(adapter_model.bin\)"):
        opened_adapter(tiny_base, directory, before).__enter__()
    (directory / "adapter_model.bin").unlink()
    with (
        pytest.raises(ValueError, match="not the same adapter"),
        opened_adapter(tiny_base, directory, dict(list(before.items())[1:])),
    ):
        pass
    assert_pristine(tiny_base.lm, weights)  # refused after attaching: taken off again
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no adapter_model.safetensors"):
        opened_adapter(tiny_base, directory, before).__enter__()


def test_the_archive_is_reproducible_and_opens_to_the_same_adapter(tiny_base: LoadedLM) -> None:
    run = Run(tiny_base, plan("gradient_ascent", probe=False, finetune=None, max_steps=1, stop_at_target=False))

    def archived() -> bytes:
        outcome = run.outcome
        with attached_lora(tiny_base.lm, outcome.adapter.config, outcome.adapter.state) as peft_lm:
            return adapter_archive(
                peft_lm,
                "tiny-base",
                outcome.metrics,
                PROVENANCE,
                base_model_source="path:/models/tiny",
                forgetting=outcome.forgetting,
                curves=outcome.curves,
            )

    archive = archived()
    assert archived() == archive
    with opened_adapter_archive(tiny_base, archive, run.outcome.before_forgetting) as (peft_lm, manifest):
        opened = lora_state(peft_lm)
    assert manifest["method"] == PROVENANCE["method"]
    trained = run.outcome.adapter.state
    assert opened.keys() == trained.keys() and all(torch.equal(opened[n], trained[n]) for n in trained)


def test_model_card_says_in_words_when_the_target_was_missed_or_a_score_rose() -> None:
    forgetting = MISSED
    card = str(model_card("tiny-base", "path:/models/tiny", [], PROVENANCE, forgetting=forgetting, curves=[]))
    forgetting_section = card.split("## Forgetting\n\n")[1].split("\n")[0]
    assert forgetting_section == forgetting.summary()
    assert "did NOT reach its target" in forgetting_section
    assert "forget_heldout accuracy ROSE during forgetting" in forgetting_section


def test_the_card_escapes_user_text_and_parses_back(tiny_base: LoadedLM, saved_adapter, tmp_path) -> None:
    """Dataset names reach the card's table, card data and provenance block inert; the card data parses back."""
    directory, _ = saved_adapter
    lm = PeftModel.from_pretrained(copy.deepcopy(tiny_base.lm), str(directory))
    script, piped = "<script>alert(1)</script>", "a|b `code` ```fence [x](javascript:y)"
    metrics = [
        MetricValue("forgotten", f"retain:{script}", "accuracy", 0.5, None, 40, 0.35, 0.65),
        MetricValue("forgotten", f"retain:{piped}", "accuracy", 0.75, None, 40, 0.6, 0.86),
        MetricValue("base", "forget_train", "accuracy", 0.9, None, 40, 0.77, 0.96),
    ]
    provenance = {**PROVENANCE, "dataset_sha256": {script: "ab" * 32, piped: "cd" * 32}}
    out_dir = export_adapter(
        lm,
        tmp_path / "out",
        "tiny-base",
        metrics,
        provenance,
        base_model_source="path:/models/tiny",
        forgetting=MISSED,
        curves=[CurvePoint(f"retain:{script}", "accuracy", 1, 0.5)],
    )
    text = (out_dir / "README.md").read_text()

    assert "<script" not in text and "`code`" not in text
    assert text.count("```") == 2  # the provenance block's own fence, nothing a name opened or closed
    outside_the_fence = text.split("```json")[0]  # (inside it markdown makes no links)
    assert "](javascript" not in outside_the_fence
    assert [line for line in text.splitlines() if line.startswith("| forgotten | retain:")] == [
        "| forgotten | retain:&lt;script&gt;alert(1)&lt;/script&gt; | accuracy |  | 0.5000 | 40 | 0.3500 to 0.6500 |",
        "| forgotten | retain:a\\|b &#96;code&#96; &#96;&#96;&#96;fence &#91;x&#93;(javascript:y) | accuracy |  "
        "| 0.7500 | 40 | 0.6000 to 0.8600 |",
    ]
    assert "| retain:&lt;script&gt;alert(1)&lt;/script&gt; | accuracy | 1 | 0.5000 |" in text
    # The provenance block is the same JSON, names as given.
    block = json.loads(text.split("```json\n")[1].split("\n```")[0])
    assert block["dataset_sha256"] == provenance["dataset_sha256"]
    assert json.loads((out_dir / "manifest.json").read_text())["dataset_sha256"] == provenance["dataset_sha256"]

    data = ModelCard(text).data
    assert data.base_model == "/models/tiny" and data.library_name == "peft"
    assert {"lethe", "unlearning", "lora"} <= set(data.tags)
    # model-index: the delivered adapter's metrics; every metric with n and interval in metric_intervals.
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in data.eval_results] == [
        ("retain:&lt;script&gt;alert(1)&lt;/script&gt;", "accuracy", 0.5),
        ("retain:a|b &#96;code&#96; &#96;&#96;&#96;fence &#91;x&#93;(javascript:y)", "accuracy", 0.75),
    ]
    assert data.metric_intervals[2] == {
        "stage": "base",
        "split": "forget_train",
        "name": "accuracy",
        "layer": None,
        "value": 0.9,
        "n": 40,
        "ci_low": 0.77,
        "ci_high": 0.96,
    }
