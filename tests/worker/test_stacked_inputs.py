"""A stacked job's inputs: the parent's weights read from its archive, and the forget set of every adapter of the
lineage split as its own job split it, each dataset once, a name shared by different splits kept apart."""

import gzip
import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from lethe.rows import ChoiceRow, split_heldout
from models.tables import Adapter, Dataset
from storage.local import LocalObjectStore
from tests.conftest import forget_job_spec
from tests.tiny_lm import synthetic_choice_rows
from worker.pipelines.forget import ForgetInputs, _add_parent, _Ancestor
from worker.pipelines.jobs import JobFailure


def _archive(weights: dict[str, torch.Tensor]) -> bytes:
    """A tar.gz holding adapter_model.safetensors, as an adapter archive does."""
    data = save_safetensors(weights)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _dataset(store: LocalObjectStore, name: str, seed: int) -> Dataset:
    dataset = Dataset(id=uuid.uuid4(), name=name, kind="choice", sha256=f"{seed:064d}", object_key=f"d/{name}/{seed}")
    rows = synthetic_choice_rows(10, seed=seed)
    store.put(dataset.object_key, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return dataset


def _inputs() -> ForgetInputs:
    return ForgetInputs(uuid.uuid4(), forget_job_spec(uuid.uuid4()), [], {}, {})


def test_the_lineage_gives_the_parent_weights_and_each_forget_set_once(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    saved = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 3)}
    parent = Adapter(id=uuid.uuid4(), object_key="a/parent")
    store.put(parent.object_key, _archive(saved))
    first, other_first, second = _dataset(store, "first", 1), _dataset(store, "first", 2), _dataset(store, "second", 3)
    grandparent, older, root = Adapter(id=uuid.uuid4()), Adapter(id=uuid.uuid4()), Adapter(id=uuid.uuid4())
    lineage = [
        _Ancestor(parent, second, 0.5, 0),
        _Ancestor(grandparent, first, 0.2, 4),
        _Ancestor(older, first, 0.2, 4),  # the grandparent's rows again, split the same way: scored once
        _Ancestor(root, other_first, 0.5, 0),  # another dataset of the same name: its own splits
    ]
    inputs = _inputs()
    _add_parent(inputs, store, lineage)

    assert inputs.parent is not None
    [(name, tensor)] = inputs.parent.weights.items()
    assert name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert torch.equal(tensor, torch.ones(2, 3))
    assert list(inputs.parent.forget_sets) == ["second", "first", f"first (adapter {root.id})"]
    rows = [ChoiceRow.from_dict(r) for r in synthetic_choice_rows(10, seed=1)]
    assert inputs.parent.forget_sets["first"] == split_heldout(rows, 0.2, 4)
    assert inputs.lineage == [parent.id, grandparent.id, older.id, root.id]
    assert inputs.parent_dataset_hashes["first"] == first.sha256


def test_an_archive_without_safetensors_fails_the_job_by_name(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    parent = Adapter(id=uuid.uuid4(), object_key="a/parent")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as compressed, tarfile.open(fileobj=compressed, mode="w"):
        pass
    store.put(parent.object_key, buffer.getvalue())
    with pytest.raises(JobFailure, match="has no adapter_model.safetensors"):
        _add_parent(_inputs(), store, [_Ancestor(parent, _dataset(store, "first", 1), 0.5, 0)])
