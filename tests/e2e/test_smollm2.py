"""The real LM: a forget request on SmolLM2-135M-Instruct through `lethe serve` (embedded default).

Marked `smollm2`: minutes on a CPU. It asserts that forgetting really happened: forget-train accuracy ends
within 0.1 of chance while the retain set stays within 0.1 of where it was before forgetting.
"""

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import BOOTSTRAP_KEY, ROOT, wait_for_job, wait_until_healthy

DATA = ROOT / "examples" / "data"


@pytest.mark.smollm2
def test_random_label_forgets_piqa_and_keeps_arc(tmp_path: Path, start_service, smollm2_cache_dir: Path) -> None:
    env = {
        "LETHE_DATA_DIR": str(tmp_path / "lethe-data"),
        "LETHE_DATABASE_URL": "",
        "LETHE_BROKER_URL": "",
        "LETHE_STORAGE_URL": "",
        "LETHE_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY,
    }
    # Reuse one converted copy of the bundled model across runs of the suite.
    (tmp_path / "lethe-data").mkdir()
    (tmp_path / "lethe-data" / "base_models").symlink_to(smollm2_cache_dir, target_is_directory=True)
    port = free_port()
    server = start_service(["serve", "--port", str(port)], env)
    base_url = f"http://127.0.0.1:{port}"
    wait_until_healthy(base_url, server)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=60) as client:
        ids = {}
        for name, path in [("piqa", DATA / "piqa_demo.jsonl"), ("arc_easy", DATA / "arc_easy_demo.jsonl")]:
            response = client.post(
                "/v1/datasets", files={"file": (path.name, path.read_bytes())}, data={"name": name, "kind": "choice"}
            )
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
        request = json.loads((ROOT / "examples" / "demo_request.json").read_text())
        request |= {"forget_dataset": ids["piqa"], "retain_datasets": [ids["arc_easy"]]}
        submitted = client.post("/v1/forget-requests", json=request)
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(client, submitted.json()["job_id"], [server], timeout_s=1800)
    assert job["status"] == "succeeded", (job, server.log())

    accuracy = {(m["stage"], m["split"]): m["value"] for m in job["metrics"] if m["name"] == "accuracy"}
    before = "finetuned" if request.get("finetune") else "base"
    assert abs(accuracy[("forgotten", "forget_train")] - 0.5) <= 0.1, accuracy
    assert abs(accuracy[("forgotten", "retain:arc_easy")] - accuracy[(before, "retain:arc_easy")]) <= 0.1, accuracy
