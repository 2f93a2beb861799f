"""The adapter format: a trained LoRA adapter in PEFT format (safetensors) with a model card (whether forgetting
reached its target, metrics with their intervals, the forgetting curve, provenance) and a manifest, stored as a
reproducible tar.gz, and opened again on its base LM (attached in place for a while, not on a copy)."""

from __future__ import annotations

import contextlib
import gzip
import html
import io
import json
import platform
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from peft import LoraConfig, PeftModel
from safetensors.torch import load as load_safetensors
from transformers import PreTrainedModel

from lethe.forgetting import Forgetting
from worker.engine.lm.load import BUNDLED_LMS, LoadedLM
from worker.engine.lm.lora import TRAINED, LoraState, attached, fused, lora_state
from worker.engine.metrics.values import CurvePoint, MetricValue

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"
_VERSIONED_PACKAGES = ("torch", "transformers", "peft", "scikit-learn", "numpy")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that determine an adapter's numbers."""
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def base_model_reference(source: str) -> tuple[str, str | None]:
    """What an exported adapter names as its base, `(base_model_name_or_path, revision)`, from the base model's
    source, so that `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` resolves it.

    - `hf:org/name@<commit>`: the hub id `org/name`, pinned to the commit the source resolved to.
    - `path:/abs/dir`: the directory, which exists on the hosts that share the base model's volume.
    - `bundled:<id>`: the hub id the bundled GGUF was made from (`BundledLM.made_from`), unpinned: no commit is
      recorded for the GGUF. Lethe measured the adapter on the GGUF's weights dequantized (Q4_1), which differ
      slightly from that repository's; the model card says how to load it on Lethe's own copy instead.
    """
    kind, _, location = source.partition(":")
    if kind == "hf":
        repo_id, _, revision = location.partition("@")
        return repo_id, revision or None
    if kind == "path":
        return location, None
    if kind == "bundled":
        return BUNDLED_LMS.get(location).made_from, None
    raise ValueError(f"unsupported base LM source {source!r}; expected hf:org/name@revision, path: or bundled:")


def export_adapter(
    peft_lm: PeftModel,
    out_dir: Path | str,
    base_model: str,
    card_metrics: Iterable[MetricValue | Mapping[str, Any]],
    provenance: Mapping[str, Any],
    *,
    base_model_source: str,
    forgetting: Forgetting,
    curves: Iterable[CurvePoint],
) -> Path:
    """Write adapter_config.json, adapter_model.safetensors, README.md (model card) and manifest.json into `out_dir`.

    `base_model` is the catalogue name, `base_model_source` its source: adapter_config.json names the base as
    `base_model_reference` resolves it. `card_metrics` are MetricValues or dicts of their fields; `forgetting` and
    `curves` are the run's (the card says in words whether the target was reached). The provenance gets a
    `library_versions` entry unless the caller supplied one; manifest.json is the same provenance as canonical JSON
    (the reproducibility manifest; names there are as the user gave them, the card escapes them).
    """
    metrics = [m if isinstance(m, MetricValue) else MetricValue(**m) for m in card_metrics]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_lm.save_pretrained(str(out_dir), safe_serialization=True)

    # PEFT records the base LM's local path (the worker's copy); name one that resolves elsewhere instead, with
    # the revision that pins it (peft passes `revision` on to transformers when it loads the base).
    reference, revision = base_model_reference(base_model_source)
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = reference
    config["revision"] = revision
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    full_provenance = {"library_versions": library_versions(), **provenance}
    card = model_card(base_model, base_model_source, metrics, full_provenance, forgetting=forgetting, curves=curves)
    (out_dir / "README.md").write_text(str(card))
    manifest = json.dumps(full_provenance, indent=2, sort_keys=True, default=str)
    (out_dir / MANIFEST).write_text(manifest + "\n")
    return out_dir


def model_card(
    base_model: str,
    base_model_source: str,
    metrics: Iterable[MetricValue],
    provenance: Mapping[str, Any],
    *,
    forgetting: Forgetting,
    curves: Iterable[CurvePoint],
) -> ModelCard:
    """The adapter's model card: card data (`base_model`, `library_name: peft`, tags, the delivered adapter's
    metrics as model-index `eval_results`, and every metric with its n and 95% interval as `metric_intervals`,
    which EvalResult has no field for), then how to load it, whether forgetting reached its target (in words), a
    metrics table with each value's n and interval, the forgetting curve and the provenance as JSON.

    Every user-supplied string (dataset and retain-set names in split names and the provenance, the base model's
    name) is escaped: HTML-significant characters, backticks and brackets as HTML entities, table pipes as `\\|`, in the
    card data and the text alike; the provenance JSON escapes them as `\\u` sequences (it parses back to the same
    values). manifest.json keeps every name as given.
    """
    metrics = list(metrics)
    reference, revision = base_model_reference(base_model_source)
    title = f"Lethe unlearning adapter for {_text(base_model)}"
    data = ModelCardData(
        base_model=_text(reference),
        library_name="peft",
        tags=["lethe", "unlearning", "lora"],
        model_name=title,
        eval_results=[_eval_result(m) for m in metrics if m.stage == DELIVERED_STAGE] or None,
        # Extra card-data fields: ModelCardData keeps unknown keys as given.
        base_model_revision=revision,
        metric_intervals=[
            {
                "stage": _text(m.stage),
                "split": _text(m.split),
                "name": _text(m.name),
                "layer": m.layer,
                "value": m.value,
                "n": m.n,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
            }
            for m in metrics
        ],
    )
    lines = [
        f"# {title}",
        "",
        *_loading_instructions(reference, revision, base_model_source),
        "",
        "## Forgetting",
        "",
        forgetting.summary(),
        "",
        "## Metrics",
        "",
        "| stage | split | metric | layer | value | n | 95% interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        layer = "" if m.layer is None else str(m.layer)
        n = "" if m.n is None else str(m.n)
        interval = "" if m.ci_low is None or m.ci_high is None else f"{m.ci_low:.4f} to {m.ci_high:.4f}"
        lines.append(_row([m.stage, m.split, m.name, layer, f"{m.value:.4f}", n, interval]))
    lines += [
        "",
        "`forget_gap` = accuracy − chance; `forget_ratio` = (acc_before − acc_after) / (acc_before − chance), "
        "omitted where the LM was not above chance before forgetting; `probe_accuracy` is the heldout accuracy "
        "of a linear probe on each layer's hidden states (layer 0 = embeddings). `n` is the rows a value rests on; "
        "the 95% interval is Wilson's for accuracies and a bootstrap over rows (seeded by the job's seed) for the "
        "rest, paired for forget_ratio (the same rows before and after forgetting); `GET /v1/metrics` names each "
        "metric's. A blank interval: none was drawn. Names in this card are HTML-escaped; manifest.json has them "
        "as given.",
        "",
        "## Forgetting curve",
        "",
        "Each split's primary score measured during forgetting, after the given number of optimiser steps. The "
        f"metrics above (stage `{DELIVERED_STAGE}`) are the delivered adapter's; these points are not.",
        "",
        "| split | metric | step | value |",
        "|---|---|---|---|",
        *(_row([p.split, p.name, str(p.step), f"{p.value:.4f}"]) for p in curves),
        "",
        "## Provenance",
        "",
        "```json",
        _escaped_json(provenance),
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# The stage whose metrics are the delivered adapter's (`worker/engine/forget/run.py`).
DELIVERED_STAGE = "forgotten"


def _eval_result(m: MetricValue) -> EvalResult:
    """A delivered-adapter metric as a model-index entry; the split stands where a hub dataset would."""
    name = m.name if m.layer is None else f"{m.name} (layer {m.layer})"
    return EvalResult(
        task_type="text-generation",
        task_name="unlearning",
        dataset_type="lethe-split",
        dataset_name=_text(m.split),
        dataset_split=_text(m.split),
        metric_type=_text(m.name),
        metric_name=_text(name),
        metric_value=m.value,
    )


def _loading_instructions(reference: str, revision: str | None, source: str) -> list[str]:
    pinned = f" at revision {revision}" if revision else ""
    lines = [
        "A LoRA adapter produced by Lethe. Load it with its base LM "
        f"({_text(reference)}{pinned}, named in adapter_config.json) by "
        "`AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`, or on a base LM you loaded yourself by "
        "`PeftModel.from_pretrained(base_lm, adapter_dir)`.",
    ]
    if source.startswith("bundled:"):
        lines += [
            "",
            "Lethe measured it on its bundled copy of that LM: the GGUF dequantized, whose weights differ slightly "
            "from the repository's. To reproduce the numbers below exactly, load the base LM from Lethe's converted "
            "copy (`.lethe/base_models/bundled/<name>` by default) and use `PeftModel.from_pretrained`.",
        ]
    return lines


def _text(value: str) -> str:
    """A user-supplied string made inert in markdown and HTML: `<>&"'`, backticks (code spans, fences) and square
    brackets (link and image syntax) as HTML entities, newlines as spaces (a newline would end a table row)."""
    escaped = html.escape(value, quote=True).replace("`", "&#96;").replace("[", "&#91;").replace("]", "&#93;")
    return escaped.replace("\r", " ").replace("\n", " ")


def _row(cells: list[str]) -> str:
    # A pipe inside a cell (e.g. in a retain set's name) would split the table column.
    return "| " + " | ".join(_text(cell).replace("|", "\\|") for cell in cells) + " |"


# JSON may write any character as \uXXXX: these are the ones HTML or a markdown fence would read.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "`": "\\u0060"}


def _escaped_json(value: Mapping[str, Any]) -> str:
    """`value` as indented JSON in which no string can close the code fence or open an HTML tag: those characters
    occur only inside JSON strings, so escaping them keeps it the same JSON."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    for character, escape in _JSON_ESCAPES.items():
        text = text.replace(character, escape)
    return text


def archived_weights(archive: bytes) -> LoraState:
    """The LoRA weights in `archive` (an `adapter_archive`), read from its safetensors without opening an LM, keyed
    as `lora_state` keys the trained adapter's (peft saves them without the adapter's name)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        try:
            member = tar.extractfile(ADAPTER_WEIGHTS)
        except KeyError:
            member = None
        if member is None:
            raise ValueError(f"the adapter archive has no {ADAPTER_WEIGHTS} (Lethe loads safetensors only)")
        saved = load_safetensors(member.read())
    # `...q_proj.lora_A.weight` as saved is `...q_proj.lora_A.default.weight` in the PeftModel.
    return {_SAVED_LORA.sub(rf".\1.{TRAINED}.", name): tensor for name, tensor in saved.items()}


_SAVED_LORA = re.compile(r"\.(lora_[AB])\.")


def adapter_archive(
    peft_lm: PeftModel,
    base_model: str,
    card_metrics: Iterable[MetricValue | Mapping[str, Any]],
    provenance: Mapping[str, Any],
    *,
    base_model_source: str,
    forgetting: Forgetting,
    curves: Iterable[CurvePoint],
) -> bytes:
    """The adapter exported as `export_adapter` writes it, as a reproducible tar.gz: what the object store keeps."""
    with tempfile.TemporaryDirectory(prefix="lethe-adapter-") as tmp:
        directory = export_adapter(
            peft_lm,
            tmp,
            base_model,
            card_metrics,
            provenance,
            base_model_source=base_model_source,
            forgetting=forgetting,
            curves=curves,
        )
        buffer = io.BytesIO()
        # Sorted names, zeroed times (the gzip header's too) and owners, mode 0644: the same files, the same bytes.
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(directory)))
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
    return buffer.getvalue()


@contextlib.contextmanager
def opened_adapter(
    base: LoadedLM, adapter_dir: Path, before_forgetting: Mapping[str, torch.Tensor]
) -> Iterator[PeftModel]:
    """The base LM with the PEFT adapter in `adapter_dir` (safetensors only) attached in place inside, taken off
    again on exit (`lora.attached`): no copy of the base LM's weights.

    `before_forgetting` must name exactly the adapter's parameters: it is the same adapter before forgetting.
    """
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"the adapter has no {ADAPTER_WEIGHTS} (Lethe loads safetensors only)")
    pickled = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
    if pickled:
        raise ValueError(f"the adapter carries pickled files ({', '.join(pickled)}); refusing to load it")

    def from_pretrained(lm: PreTrainedModel) -> PeftModel:
        config = fused(LoraConfig.from_pretrained(str(adapter_dir)))
        return PeftModel.from_pretrained(lm, str(adapter_dir), config=config, is_trainable=True)

    with attached(base.lm, from_pretrained) as peft_lm:
        peft_lm.eval()
        names = set(lora_state(peft_lm))
        if names != set(before_forgetting):
            raise ValueError(
                f"the adapter before forgetting has {len(before_forgetting)} parameters, the adapter {len(names)}: "
                "they are not the same adapter"
            )
        yield peft_lm


@contextlib.contextmanager
def opened_adapter_archive(
    base: LoadedLM, archive: bytes, before_forgetting: Mapping[str, torch.Tensor]
) -> Iterator[tuple[PeftModel, dict[str, Any]]]:
    """The adapter in `archive` (an `adapter_archive`) attached as `opened_adapter` does, and its manifest."""
    with tempfile.TemporaryDirectory(prefix="lethe-adapter-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        manifest = json.loads((Path(tmp) / MANIFEST).read_text("utf-8"))
        with opened_adapter(base, Path(tmp), before_forgetting) as peft_lm:
            yield peft_lm, manifest
