"""Export a trained LoRA adapter in PEFT format with a model card (metrics and provenance)."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from peft import PeftModel

from worker.engine.metrics.values import MetricValue

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
) -> Path:
    """Write adapter_config.json, adapter_model.safetensors, README.md (model card) and manifest.json into `out_dir`.

    `card_metrics` are MetricValues or dicts of their fields. The provenance gets a `library_versions` entry unless
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
    (out_dir / "README.md").write_text(model_card(base_model, metrics, full_provenance))
    manifest = json.dumps(full_provenance, indent=2, sort_keys=True, default=str)
    (out_dir / "manifest.json").write_text(manifest + "\n")
    return out_dir


def model_card(base_model: str, metrics: Iterable[MetricValue], provenance: Mapping[str, Any]) -> str:
    """Markdown model card: how to load the adapter, a metrics table and the provenance as JSON."""
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
        "## Metrics",
        "",
        "| stage | split | metric | layer | step | value |",
        "|---|---|---|---|---|---|",
    ]
    for m in metrics:
        layer = "" if m.layer is None else str(m.layer)
        step = "" if m.step is None else str(m.step)
        cells = [m.stage, m.split, m.name, layer, step, f"{m.value:.4f}"]
        # A pipe inside a cell (e.g. in a retain set's name) would split the table column.
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += [
        "",
        "`forget_gap` = accuracy − chance; `forget_ratio` = (acc_before − acc_after) / (acc_before − chance), "
        "omitted where the LM was not above chance before forgetting; `probe_accuracy` is the heldout accuracy "
        "of a linear probe on each layer's hidden states (layer 0 = embeddings).",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(provenance, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)
