"""Worker test fixtures."""

from pathlib import Path

import pytest

from tests.tiny_lm import build_tiny_lm, task_corpus


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), task_corpus())
