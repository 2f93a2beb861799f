"""A hub base model through the stack: registered over HTTP with the admin key (resolved on a loopback hub), then
a forget job whose worker downloads the snapshot into its hub cache and names commit and weights in the adapter."""

import io
import json
import tarfile
from pathlib import Path

import httpx

from lethe.base_model_sources import directory_weights_sha256
from lethe.settings import Settings
from tests.e2e.conftest import BOOTSTRAP_KEY, start_lethe, upload_rows, wait_for_job
from tests.hub_server import LoopbackHub, files_of
from tests.tiny_lm import build_tiny_lm, synthetic_choice_rows, task_corpus

ADMIN_KEY = "lethe-e2e-admin-key-0123456789"


def test_a_forget_job_on_a_hub_base_model(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    # stack_settings: the stack's catalogue, migrated.
    tiny = build_tiny_lm(tmp_path / "hub-lm", task_corpus())
    hub = LoopbackHub().start()
    try:
        commit = hub.add("lethe-test/tiny-stack").commit(files_of(tiny))
        env = {
            **stack_env,
            "LETHE_ADMIN_API_KEY": ADMIN_KEY,
            "LETHE_HF_ENDPOINT": hub.url,
            "LETHE_HF_CACHE": str(tmp_path / "hf-cache"),
        }
        base_url, services, _tiny_dir = start_lethe(tmp_path, env, start_service, with_worker=True)
        with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
            registered = client.post(
                "/v1/base-models",
                json={"name": "tiny-stack-hub", "source": "hf:lethe-test/tiny-stack@main"},
                headers={"X-API-Key": ADMIN_KEY},
            )
            assert registered.status_code == 201, registered.text
            assert registered.json()["source"] == f"hf:lethe-test/tiny-stack@{commit}"
            digest = registered.json()["weights_sha256"]
            assert digest == directory_weights_sha256(tiny, ["model.safetensors"])

            forget_id = upload_rows(client, synthetic_choice_rows(12, seed=1), "hub-categories")
            submitted = client.post(
                "/v1/forget-requests",
                json={
                    "base_model": "tiny-stack-hub",
                    "forget_dataset": forget_id,
                    "heldout_fraction": 0.5,
                    "method": {"name": "random_label", "params": {"epochs": 1, "batch_size": 4}},
                    "probe": False,
                    "general_text_perplexity": False,
                },
            )
            assert submitted.status_code == 202, submitted.text
            job = wait_for_job(client, submitted.json()["job_id"], services, timeout_s=300)
            assert job["status"] == "succeeded", (job, [s.log() for s in services])
            download = client.get(f"/v1/adapters/{job['adapter_id']}/download")
            assert download.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("manifest.json"))
            handle = archive.extractfile(member)
            assert handle is not None
            manifest = json.loads(handle.read())
        assert manifest["base_model_source"] == f"hf:lethe-test/tiny-stack@{commit}"
        assert (manifest["base_model_revision"], manifest["base_model_weights_sha256"]) == (commit, digest)
        assert "model.safetensors" in hub.downloads  # the worker fetched the weights, into its hub cache
        snapshot = tmp_path / "hf-cache" / "models--lethe-test--tiny-stack" / "snapshots" / commit
        assert (snapshot / "model.safetensors").is_file()
    finally:
        hub.stop()
