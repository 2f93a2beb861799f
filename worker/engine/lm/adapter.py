"""The adapter format: a trained LoRA adapter in PEFT format (safetensors) with a model card (whether forgetting
reached its target, metrics with their intervals, the forgetting curve, provenance) and a manifest, stored as a
reproducible tar.gz, and opened again on its base LM (attached in place for a while, not on a copy)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import platform
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from lethe.forgetting import Forgetting
from worker.engine.lm.load import LoadedLM
from worker.engine.lm.lora import attached, lora_state
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


def export_adapter(
    peft_lm: PeftModel,
    out_dir: Path | str,
    base_model: str,
    card_metrics: Iterable[MetricValue | Mapping[str, Any]],
    provenance: Mapping[str, Any],
    *,
    forgetting: Forgetting,
    curves: Iterable[CurvePoint],
) -> Path:
    """Write adapter_config.json, adapter_model.safetensors, README.md (model card) and manifest.json into `out_dir`.

    `card_metrics` are MetricValues or dicts of their fields; `forgetting` and `curves` are the run's (the card
    says in words whether the target was reached). The provenance gets a `library_versions` entry unless
    the caller supplied one; manifest.json is the same provenance as canonical JSON (the reproducibility manifest).
    """
    metrics = [m if isinstance(m, MetricValue) else MetricValue(**m) for m in card_metrics]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_lm.save_pretrained(str(out_dir), safe_serialization=True)

    # PEFT records the base LM's local path; point it at the base model's catalogue name instead.
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    full_provenance = {"library_versions": library_versions(), **provenance}
    card = model_card(base_model, metrics, full_provenance, forgetting=forgetting, curves=curves)
    (out_dir / "README.md").write_text(card)
    manifest = json.dumps(full_provenance, indent=2, sort_keys=True, default=str)
    (out_dir / MANIFEST).write_text(manifest + "\n")
    return out_dir


def model_card(
    base_model: str,
    metrics: Iterable[MetricValue],
    provenance: Mapping[str, Any],
    *,
    forgetting: Forgetting,
    curves: Iterable[CurvePoint],
) -> str:
    """Markdown model card: how to load the adapter, whether forgetting reached its target (in words), a metrics
    table with each value's n and 95% interval, the forgetting curve and the provenance as JSON."""
    lines = [
        "---",
        "library_name: peft",
        "tags:",
        "- lethe",
        "- unlearning",
        "- lora",
        "---",
        "",
        f"# Lethe unlearning adapter for `{base_model}`",
        "",
        "A LoRA adapter produced by Lethe. Load it with "
        "`PeftModel.from_pretrained(base_lm, adapter_dir)` on top of the base LM named above.",
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
        "metric's. A blank interval: none was drawn.",
        "",
        "## Forgetting curve",
        "",
        "Each split's primary score measured during forgetting, after the given number of optimiser steps. The "
        "metrics above (stage `forgotten`) are the delivered adapter's; these points are not.",
        "",
        "| split | metric | step | value |",
        "|---|---|---|---|",
        *(_row([p.split, p.name, str(p.step), f"{p.value:.4f}"]) for p in curves),
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(provenance, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def _row(cells: list[str]) -> str:
    # A pipe inside a cell (e.g. in a retain set's name) would split the table column.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def adapter_archive(
    peft_lm: PeftModel,
    base_model: str,
    card_metrics: Iterable[MetricValue | Mapping[str, Any]],
    provenance: Mapping[str, Any],
    *,
    forgetting: Forgetting,
    curves: Iterable[CurvePoint],
) -> bytes:
    """The adapter exported as `export_adapter` writes it, as a reproducible tar.gz: what the object store keeps."""
    with tempfile.TemporaryDirectory(prefix="lethe-adapter-") as tmp:
        directory = export_adapter(
            peft_lm, tmp, base_model, card_metrics, provenance, forgetting=forgetting, curves=curves
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
        return PeftModel.from_pretrained(lm, str(adapter_dir), is_trainable=True)

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
