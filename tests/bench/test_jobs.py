"""The memory step's conversion measurement, on the real bundled GGUF (marked smollm2: a conversion, ~20 s)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.smollm2

REPO = Path(__file__).resolve().parents[2]


def test_the_conversion_is_measured_in_its_own_process_and_becomes_the_caches_copy(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.jobs", str(tmp_path), "conversion"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["peak_rss_from"] == "VmHWM"
    # Its own process's peak: at least the dequantized fp32 weights (135 M parameters, 4 bytes each).
    assert measured["peak_rss_mb"] > 135e6 * 4 / 2**20 and measured["seconds"] > 0
    # The converted copy is the cache's now (the jobs after it load it), and no scratch directory is left.
    assert (tmp_path / "bundled" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundled"]
