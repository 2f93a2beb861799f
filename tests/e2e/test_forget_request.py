"""A forget request travels the whole system, over HTTP, on real processes and services.

Two deployments: the stack (uvicorn + a Celery worker process, Postgres, Redis, an S3 server) and the
embedded default (`lethe serve` alone: SQLite, a folder queue, a local object store, its own worker process).
"""

import hashlib
import io
import tarfile
import uuid
from pathlib import Path

import httpx
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lethe.rows import ChoiceRow, split_heldout
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AdapterRepository, CurvePointRepository, JobEventRepository, MetricRepository
from storage import open_store
from tests.conftest import REDIS_DB
from tests.e2e.conftest import BOOTSTRAP_KEY, own_redis_db, start_lethe, upload_rows, watch_job
from tests.e2e.job_metrics import choice_accuracy, final_metrics
from tests.tiny_lm import synthetic_choice_rows

SEED = 7


def _forget_tiny_lm(tmp_path: Path, env: dict[str, str], settings: Settings, start_service, with_worker: bool) -> None:
    base_url, services, tiny_dir = start_lethe(tmp_path, env, start_service, with_worker)
    forget_rows, retain_rows = synthetic_choice_rows(24, seed=1), synthetic_choice_rows(12, seed=2)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        forget_id = upload_rows(client, forget_rows, "categories")
        retain_id = upload_rows(client, retain_rows, "categories-retain")
        submitted = client.post(
            "/v1/forget-requests",
            json={
                "base_model": "tiny-e2e",
                "forget_dataset": forget_id,
                "retain_datasets": [retain_id],
                "heldout_fraction": 0.5,
                "finetune": {"epochs": 10, "learning_rate": 0.01},
                "method": {"name": "random_label", "params": {"learning_rate": 0.01, "epochs": 5, "batch_size": 4}},
                "probe": True,
                "seed": SEED,
            },
        )
        assert submitted.status_code == 202, submitted.text
        # Watched live, as a client would (Server-Sent Events); the stream ends with the job.
        stream, job = watch_job(client, submitted.json()["job_id"], services, timeout_s=300)
        assert job["status"] == "succeeded", (job, [s.log() for s in services])

        # One value per (stage, split, name, layer); the points of the forgetting curve are apart, with their step.
        metrics = final_metrics(job)
        assert len(metrics) == len(job["metrics"])
        curve = job["curves"]
        assert curve and all(p["name"] == "accuracy" for p in curve)
        assert {p["split"] for p in curve} == {"forget_train", "forget_heldout", "retain:categories-retain"}
        forgetting = job["forgetting"]
        assert max(p["step"] for p in curve) == forgetting["steps"]
        assert abs(forgetting["target"] - (0.5 + 0.05)) < 1e-9  # chance of a two-choice task + the default tolerance
        assert forgetting["target_reached"] == (metrics[("forgotten", "forget_train", "accuracy", None)] <= 0.55)
        words = "reached its target" if forgetting["target_reached"] else "did NOT reach its target"
        assert words in forgetting["summary"]
        accuracy = {(stage, split): value for (stage, split, name, _), value in metrics.items() if name == "accuracy"}
        assert len(accuracy) == 9  # base, finetuned, forgotten × forget_train, forget_heldout, the retain set
        # The fine-tune memorises forget-train (measured 0.67 -> 1.00; 12 rows, it does not generalise to the other
        # splits), random labels take those answers away again, below chance (measured 0.33).
        assert accuracy[("finetuned", "forget_train")] >= max(0.9, accuracy[("base", "forget_train")] + 0.25), accuracy
        assert accuracy[("forgotten", "forget_train")] <= accuracy[("finetuned", "forget_train")] - 0.4, accuracy
        for (stage, split), value in accuracy.items():
            assert metrics[(stage, split, "forget_gap", None)] == value - 0.5
        # Every accuracy carries n and its Wilson interval; the forget ratio its paired interval where one can be
        # drawn (none where too many resamples of 12 rows are not above chance before forgetting).
        for m in job["metrics"]:
            if m["name"] == "accuracy":
                assert m["n"] == 12 and m["ci_low"] <= m["value"] <= m["ci_high"], m
            if m["name"] == "forget_ratio":
                assert m["n"] == 12 and (m["ci_low"] is None or m["ci_low"] <= m["value"] <= m["ci_high"]), m
        for stage in ("finetuned", "forgotten"):
            # Embeddings (layer 0) and the tiny LM's 2 blocks.
            assert sorted(k[3] for k in metrics if k[2] == "probe_accuracy" and k[0] == stage) == [0, 1, 2]

        # The catalogue holds what the API reported, the adapter row and the ordered event trail.
        job_uuid = uuid.UUID(job["id"])
        with session_scope(settings.database_url) as session:
            assert len(MetricRepository(session).list_for_job(job_uuid)) == len(job["metrics"])
            assert len(CurvePointRepository(session).list_for_job(job_uuid)) == len(job["curves"])
            adapter_row = AdapterRepository(session).get_for_job(job_uuid)
            events = [e.type for e in JobEventRepository(session).list(job_uuid)]
        assert adapter_row is not None and str(adapter_row.id) == job["adapter_id"]
        assert events[:2] == ["queued", "running"] and events[-1] == "succeeded"
        # The stream served every event, in order, and ended at the last; progress rose, and while forgetting
        # trained it carried forget-train's curve points, each one the job reports.
        assert [e.event for e in stream] == events and [int(e.id) for e in stream] == list(range(1, len(events) + 1))
        progress = [e.json()["data"] for e in stream if e.event == "progress"]
        fractions = [p["fraction"] for p in progress]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        sent = [p["curve"] for p in progress if p["curve"] is not None and p["stage"] == "forgetting"]
        assert sent and all(point in curve for point in sent) and {p["split"] for p in sent} == {"forget_train"}
        page = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 200}).json()
        assert [item["type"] for item in page["items"]] == events and page["terminal"] is True

        # The object is in the store, and the download is that object.
        stored = open_store(settings).get(adapter_row.object_key)
        assert len(stored) == adapter_row.size_bytes
        adapter = client.get(f"/v1/adapters/{job['adapter_id']}").json()
        download = client.get(f"/v1/adapters/{job['adapter_id']}/download")
        assert download.status_code == 200
        assert download.content == stored
        assert hashlib.sha256(download.content).hexdigest() == adapter["sha256"] == adapter_row.sha256

    adapter_dir = tmp_path / "adapter"
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        tar.extractall(adapter_dir, filter="data")
    names = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "manifest.json"} <= names
    card = (adapter_dir / "README.md").read_text()
    assert job["id"] in card and forgetting["summary"] in card

    # The base LM and the downloaded adapter (loaded with plain peft), scored by the test's own few lines, give the
    # base and final accuracies the API reported, on every split.
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    rows = [ChoiceRow.from_dict(r) for r in forget_rows]
    forget_train, forget_heldout = split_heldout(rows, 0.5, seed=SEED)
    splits = {
        "forget_train": forget_train,
        "forget_heldout": forget_heldout,
        "retain:categories-retain": [ChoiceRow.from_dict(r) for r in retain_rows],
    }
    base_lm = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    for split, split_rows in splits.items():
        assert choice_accuracy(base_lm, tokenizer, split_rows) == accuracy[("base", split)], split
    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter_dir).eval()
    for split, split_rows in splits.items():
        assert choice_accuracy(lm, tokenizer, split_rows) == accuracy[("forgotten", split)], split


def test_on_the_stack(tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service) -> None:
    _forget_tiny_lm(tmp_path, own_redis_db(stack_env, REDIS_DB), stack_settings, start_service, with_worker=True)


def test_on_the_embedded_default(tmp_path: Path, start_service) -> None:
    # Empty URLs: every part is the embedded default under the data dir (SQLite, folder queue, local store).
    env = {
        "LETHE_DATA_DIR": str(tmp_path / "lethe-data"),
        "LETHE_DATABASE_URL": "",
        "LETHE_BROKER_URL": "",
        "LETHE_STORAGE_URL": "",
    }
    settings = Settings(data_dir=Path(env["LETHE_DATA_DIR"]), database_url="", broker_url="", storage_url="")
    assert settings.database_url.startswith("sqlite") and settings.embedded_broker
    _forget_tiny_lm(tmp_path, env, settings, start_service, with_worker=False)
