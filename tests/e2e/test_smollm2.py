"""The real LM: forget requests on SmolLM2-135M-Instruct through `lethe serve` (embedded default).

Marked `smollm2`: minutes on a CPU. One asserts that forgetting really happened: forget-train accuracy ends
within 0.1 of chance while the retain set stays within 0.1 of where it was before forgetting. The other re-scores
the downloaded adapter with plain `peft` and the test's own scoring, and finds every accuracy the API reported.
"""

import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lethe.rows import ChoiceRow, split_heldout
from tests.conftest import free_port
from tests.e2e.conftest import BOOTSTRAP_KEY, ROOT, Service, StartService, wait_for_job, wait_until_healthy
from tests.e2e.job_metrics import choice_accuracy

DATA = ROOT / "examples" / "data"


def _serve_embedded(tmp_path: Path, start_service: StartService, smollm2_cache_dir: Path) -> tuple[str, Service]:
    """`lethe serve` alone (SQLite, folder queue, local store), sharing the suite's converted SmolLM2."""
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
    return base_url, server


@pytest.mark.smollm2
def test_random_label_forgets_piqa_and_keeps_arc(tmp_path: Path, start_service, smollm2_cache_dir: Path) -> None:
    base_url, server = _serve_embedded(tmp_path, start_service, smollm2_cache_dir)
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


@pytest.mark.smollm2
def test_the_downloaded_adapter_scores_what_the_api_reported(
    tmp_path: Path, start_service, smollm2_cache_dir: Path
) -> None:
    """Forget 24 PIQA rows (12 train, 12 heldout), retain 16 ARC-Easy rows, no fine-tune, 2 epochs; then the
    archive from the API, loaded with `PeftModel.from_pretrained` on the base LM as Lethe stores it (the bundled
    GGUF converted to safetensors), scores every choice split within one row of the reported final accuracy."""
    forget = [json.loads(line) for line in (DATA / "piqa_demo.jsonl").read_text().splitlines()[:24]]
    retain = [json.loads(line) for line in (DATA / "arc_easy_demo.jsonl").read_text().splitlines()[:16]]
    base_url, server = _serve_embedded(tmp_path, start_service, smollm2_cache_dir)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=60) as client:
        ids = {}
        for name, rows in [("piqa", forget), ("arc_easy", retain)]:
            content = "".join(json.dumps(row) + "\n" for row in rows).encode()
            response = client.post(
                "/v1/datasets", files={"file": ("rows.jsonl", content)}, data={"name": name, "kind": "choice"}
            )
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
        request = {
            "base_model": "smollm2-135m-instruct",
            "forget_dataset": ids["piqa"],
            "retain_datasets": [ids["arc_easy"]],
            "heldout_fraction": 0.5,
            "method": {"name": "random_label", "params": {"learning_rate": 1e-3, "epochs": 2, "batch_size": 4}},
            "probe": False,
            "general_text_perplexity": False,
            "seed": 0,
        }
        submitted = client.post("/v1/forget-requests", json=request)
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(client, submitted.json()["job_id"], [server], timeout_s=1800)
        assert job["status"] == "succeeded", (job, server.log())
        archive = client.get(f"/v1/adapters/{job['adapter_id']}/download")
        assert archive.status_code == 200, archive.text

    adapter_dir = tmp_path / "adapter"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(adapter_dir, filter="data")
    base_dir = smollm2_cache_dir / "bundled" / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lm = PeftModel.from_pretrained(base, adapter_dir).eval()

    forget_rows = [ChoiceRow.from_dict(row) for row in forget]
    forget_train, forget_heldout = split_heldout(forget_rows, 0.5, seed=0)
    splits = {
        "forget_train": forget_train,
        "forget_heldout": forget_heldout,
        "retain:arc_easy": [ChoiceRow.from_dict(row) for row in retain],
    }
    reported = {m["split"]: m["value"] for m in job["metrics"] if m["stage"] == "forgotten" and m["name"] == "accuracy"}
    assert reported.keys() == splits.keys(), reported
    for split, rows in splits.items():
        rescored = choice_accuracy(lm, tokenizer, rows)
        print(f"{split}: reported {reported[split]:.4f}, re-scored {rescored:.4f} ({len(rows)} rows)")
        # Within one row: the worker scores a row's choices together (tree attention mask, batches), this test one
        # sequence at a time; float sums in another order may flip a near tie.
        assert abs(rescored - reported[split]) <= 1 / len(rows) + 1e-9, (split, reported[split], rescored)
