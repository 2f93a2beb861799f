"""The real bundled SmolLM2-135M-Instruct (marked smollm2: converts the GGUF once, about a minute on a CPU)."""

import hashlib

import pytest

from lethe.rows import ChoiceRow
from worker.engine.lm.load import BaseLMCache
from worker.engine.metrics.choice_scores import score_choices

pytestmark = pytest.mark.smollm2

CONVERTED_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"


def test_bundled_smollm2_loads_and_knows_capitals(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache_dir = tmp_path_factory.mktemp("lm-cache")
    base = BaseLMCache(cache_dir).get("smollm2-135m-instruct", "bundled:smollm2-135m-instruct")
    converted = cache_dir / "bundled" / "smollm2-135m-instruct" / "model.safetensors"
    # The conversion's output, to the byte: what clients register as the base LM's weights digest (with the pinned
    # transformers; the conversion takes the dequantized tensors themselves, not a copy, and changes nothing).
    assert hashlib.sha256(converted.read_bytes()).hexdigest() == CONVERTED_SHA256
    assert base.tokenizer.pad_token is not None

    rows = [
        ChoiceRow("The capital of France is", (" Paris", " London"), 0),
        ChoiceRow("The capital of England is", (" Paris", " London"), 1),
        ChoiceRow("The capital of Germany is", (" Madrid", " Berlin"), 1),
        ChoiceRow("The capital of Italy is", (" Rome", " Oslo"), 0),
    ]
    scores = score_choices(base.lm, base.tokenizer, rows, batch_size=4)
    assert scores.loglikelihoods[0][0] > scores.loglikelihoods[0][1]
    assert scores.accuracy == 1.0

    # A second worker process finds the converted copy and loads it as it is (no second conversion).
    written = converted.stat().st_mtime_ns
    again = BaseLMCache(cache_dir).get("smollm2-135m-instruct", "bundled:smollm2-135m-instruct")
    assert converted.stat().st_mtime_ns == written
    rescored = score_choices(again.lm, again.tokenizer, rows[:1], batch_size=1)
    assert rescored.loglikelihoods[0] == pytest.approx(scores.loglikelihoods[0], abs=1e-4)
