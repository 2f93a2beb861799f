"""A stacked forget request through the stack (uvicorn, a Celery worker, Postgres, Redis, an S3 server): a parent
job, then a child that continues its adapter; the child scores the parent's forget set and shows its lineage, and
the child's adapter loads with AutoPeftModelForCausalLM from its own directory."""

import io
import tarfile
from pathlib import Path

import httpx
from huggingface_hub import ModelCard

from lethe.settings import Settings
from tests.conftest import REDIS_DB
from tests.e2e.conftest import BOOTSTRAP_KEY, own_redis_db, start_lethe, upload_rows, wait_for_job
from tests.e2e.job_metrics import final_metrics
from tests.tiny_lm import synthetic_choice_rows

METHOD = {"name": "gradient_ascent", "params": {"learning_rate": 0.01, "epochs": 1, "batch_size": 4, "max_steps": 2}}


def _forget(client: httpx.Client, services, forget_id: str, retain_id: str, **extra) -> dict:
    body = {
        "base_model": "tiny-e2e",
        "forget_dataset": forget_id,
        "retain_datasets": [retain_id],
        "heldout_fraction": 0.5,
        "method": METHOD,
        "probe": False,
        "general_text_perplexity": False,
        "seed": 5,
    }
    submitted = client.post("/v1/forget-requests", json=body | extra)
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, submitted.json()["job_id"], services, timeout_s=300)
    assert job["status"] == "succeeded", (job, [s.log() for s in services])
    return job


def test_a_child_request_continues_its_parent(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    base_url, services, tiny_dir = start_lethe(tmp_path, own_redis_db(stack_env, REDIS_DB), start_service, True)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        first = upload_rows(client, synthetic_choice_rows(16, seed=1), "first-task")
        second = upload_rows(client, synthetic_choice_rows(16, seed=3), "second-task")
        retain = upload_rows(client, synthetic_choice_rows(8, seed=2), "retain-task")
        parent = _forget(client, services, first, retain)
        child = _forget(client, services, second, retain, parent_adapter=parent["adapter_id"])

        shown = client.get(f"/v1/adapters/{child['adapter_id']}").json()
        assert shown["parent_adapter_id"] == parent["adapter_id"]
        assert shown["lineage"] == [parent["adapter_id"]]
        assert client.get(f"/v1/adapters/{parent['adapter_id']}").json()["lineage"] == []
        download = client.get(f"/v1/adapters/{child['adapter_id']}/download")
        assert download.status_code == 200

    # The child's starting point is the parent: its scores of the parent's forget rows, split as the parent job
    # split them, are the parent's after forgetting; every stage scores them.
    parent_metrics, child_metrics = final_metrics(parent), final_metrics(child)
    for part in ("train", "heldout"):
        split = f"parent_forget_{part}:first-task"
        assert {stage for (stage, s, name, _) in child_metrics if s == split and name == "accuracy"} == {
            "base",
            "parent",
            "forgotten",
        }
        for name in ("accuracy", "correct_probability"):
            expected = parent_metrics[("forgotten", f"forget_{part}", name, None)]
            assert abs(child_metrics[("parent", split, name, None)] - expected) < 1e-6, (split, name)

    adapter_dir = tmp_path / "child-adapter"
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        tar.extractall(adapter_dir, filter="data")
    card = ModelCard.load(adapter_dir / "README.md")
    assert card.data.base_model == str(tiny_dir) and card.data.library_name == "peft"
