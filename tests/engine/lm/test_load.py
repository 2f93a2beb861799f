import threading

import pytest
import torch

from lethe.base_model_sources import directory_weights_sha256
from worker.engine.lm.load import BaseLMCache, LoadedLM, device_and_dtype, load_base_lm
from worker.engine.lm.lora import attach_lora, carries_lora


def test_a_path_source_loads_frozen_in_eval_mode(tiny_base: LoadedLM) -> None:
    assert tiny_base.base_model == "tiny"
    assert not tiny_base.lm.training
    assert not any(p.requires_grad for p in tiny_base.lm.parameters())
    assert tiny_base.tokenizer.pad_token is not None
    assert tiny_base.tokenizer.padding_side == "right"
    assert tiny_base.device == device_and_dtype()[0]


def test_device_and_dtype_follow_the_hardware() -> None:
    device, dtype = device_and_dtype()
    if torch.cuda.is_available():
        assert device.type == "cuda" and dtype in (torch.bfloat16, torch.float32)
    else:
        assert (device, dtype) == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("source", ["hf:org/name@main", "path:relative/dir", "path:/no/such/dir", "nonsense"])
def test_bad_sources_are_refused(source: str, tmp_path) -> None:
    with pytest.raises(ValueError):
        load_base_lm("x", source, tmp_path)


def test_unknown_bundled_lm_names_the_known_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown bundled base LM 'gpt-5'; allowed: smollm2-135m-instruct"):
        load_base_lm("x", "bundled:gpt-5", tmp_path)


def test_a_directory_without_safetensors_is_refused(tiny_lm_dir, tmp_path) -> None:
    (tmp_path / "config.json").write_text((tiny_lm_dir / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((tiny_lm_dir / name).read_text())
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        ValueError,
        match=r"no safetensors weights \(model.safetensors\) in .*; pickled weights \(\*.bin, \*.pt\) are never",
    ):
        load_base_lm("x", f"path:{tmp_path}", tmp_path)


def test_a_path_source_records_its_weights_digest(tiny_base: LoadedLM, tiny_lm_dir) -> None:
    assert tiny_base.weights_sha256 == directory_weights_sha256(tiny_lm_dir, ["model.safetensors"])


def test_cache_keeps_the_last_base_lm(tiny_lm_dir, tmp_path) -> None:
    cache = BaseLMCache(tmp_path)
    first = cache.get("tiny", f"path:{tiny_lm_dir}")
    assert cache.get("tiny", f"path:{tiny_lm_dir}") is first
    other = cache.get("tiny-again", f"path:{tiny_lm_dir}")
    assert other is not first and other.base_model == "tiny-again"
    assert cache.get("tiny", f"path:{tiny_lm_dir}") is not first


def test_a_lease_hands_the_cached_lm_to_one_job_at_a_time(tiny_lm_dir, tmp_path) -> None:
    cache = BaseLMCache(tmp_path)
    source = f"path:{tiny_lm_dir}"
    events: list[str] = []
    first_holds = threading.Event()

    def second_job() -> None:
        first_holds.wait()
        with cache.lease("tiny", source):
            events.append("second")

    other = threading.Thread(target=second_job)
    other.start()
    with cache.lease("tiny", source) as base:
        assert base is cache.get("tiny", source)
        first_holds.set()
        other.join(timeout=0.5)
        assert other.is_alive()  # waiting for this lease to end
        events.append("first")
    other.join(timeout=30)
    assert events == ["first", "second"]


def test_the_cache_never_hands_out_an_lm_that_carries_an_adapter(tiny_lm_dir, tmp_path) -> None:
    cache = BaseLMCache(tmp_path)
    source = f"path:{tiny_lm_dir}"
    with cache.lease("tiny", source) as base:
        attach_lora(base.lm, rank=4, alpha=8)  # a job that never takes its adapter off again (a bug)
        with pytest.raises(RuntimeError, match="still carries a job's LoRA layers"):
            cache.get("tiny", source)
    # The lease dropped it: the next job gets a freshly loaded LM.
    again = cache.get("tiny", source)
    assert again is not base and not carries_lora(again.lm)
