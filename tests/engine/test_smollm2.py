"""The real bundled SmolLM2-135M-Instruct (marked smollm2: converts the GGUF once, about a minute on a CPU)."""

import pytest

from lethe.rows import ChoiceRow
from worker.engine.lm.load import BaseLMCache
from worker.engine.metrics.choice_scores import score_choices

pytestmark = pytest.mark.smollm2

# The loaded LM's weights digest (`weights_sha256`, over the converted model.safetensors, whose own sha256 is
# a672150f…): what a client registers as the bundled base's expected digest.
REGISTERED_DIGEST = "7b387f36e4bf9057f976bb15969fee54f8394e46ccebb4c225b93ff22fd4b0f9"


def test_bundled_smollm2_loads_and_knows_capitals(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache_dir = tmp_path_factory.mktemp("lm-cache")
    base = BaseLMCache(cache_dir).get("smollm2-135m-instruct", "bundled:smollm2-135m-instruct")
    converted = cache_dir / "bundled" / "smollm2-135m-instruct" / "model.safetensors"
    assert converted.is_file()
    # The conversion's output, to the byte, as the digest clients register (with transformers 5.24.0; pyproject
    # allows >=5.23,<6, and a release that saved other bytes would break every registration of it: this says so).
    assert base.weights_sha256 == REGISTERED_DIGEST
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
