"""Engine test fixtures: one tiny LM per session, single-threaded torch, a saved adapter."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.tiny_lm import build_tiny_lm, task_corpus
from worker.engine.lm.load import LoadedLM, load_base_lm
from worker.engine.lm.lora import attach_lora, lora_state


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """The tiny LM's matrices are far too small to gain from threads; on a busy CPU threads cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), task_corpus())


@pytest.fixture(scope="session")
def tiny_base(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedLM:
    """The tiny LM loaded as a base LM (shared: tests must not modify it)."""
    return load_base_lm("tiny", f"path:{tiny_lm_dir}", tmp_path_factory.mktemp("lm-cache"))


@pytest.fixture
def saved_adapter(tiny_base: LoadedLM, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A LoRA adapter saved with peft (safetensors) and its state before training (B = 0)."""
    torch.manual_seed(0)
    peft_lm = attach_lora(copy.deepcopy(tiny_base.lm), rank=4, alpha=8)
    before = lora_state(peft_lm)
    with torch.no_grad():
        for name, parameter in peft_lm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    peft_lm.save_pretrained(str(tmp_path), safe_serialization=True)
    return tmp_path, before
