"""qa and text forget requests over HTTP on the stack: the methods with a retain term, plug-ins, every metric family,
the per-example values in the object store and the manifest in the adapter archive."""

import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from lethe.settings import Settings
from tests.e2e.conftest import BOOTSTRAP_KEY, own_redis_db, start_lethe, upload_rows, wait_for_job
from tests.e2e.job_metrics import final_metrics
from tests.tiny_lm import synthetic_choice_rows, synthetic_qa_rows, synthetic_text_rows

STAGES = ("base", "finetuned", "forgotten")


def _submit(client: httpx.Client, forget_id: str, retain_ids: list[str], method: dict) -> dict:
    response = client.post(
        "/v1/forget-requests",
        json={
            "base_model": "tiny-e2e",
            "forget_dataset": forget_id,
            "retain_datasets": retain_ids,
            "heldout_fraction": 0.5,
            # 40 epochs: the tiny LM learns qa answers and passages slowly (5 barely moved them).
            "finetune": {"epochs": 40, "learning_rate": 0.01},
            "method": method,
            "probe": True,
            "general_text_perplexity": False,
            "seed": 3,
        },
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_qa_and_text_requests(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service
) -> None:
    base_url, services, _ = start_lethe(tmp_path, own_redis_db(stack_env, 13), start_service, with_worker=True)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        methods = {m["name"]: m for m in client.get("/v1/methods").json()}
        assert {"gradient_ascent", "random_label", "grad_diff", "npo", "simnpo", "idk", "rmu", "lwf"} <= set(methods)
        assert methods["lwf"]["experimental"] and methods["lwf"]["reconstructed"]
        assert not methods["npo"]["experimental"] and methods["npo"]["reconstructed"] is None
        metric_names = {m["name"] for m in client.get("/v1/metrics").json()}
        qa_id = upload_rows(client, synthetic_qa_rows(16, seed=1), "facts", kind="qa")
        text_id = upload_rows(client, synthetic_text_rows(8, seed=2), "passages", kind="text")
        retain_id = upload_rows(client, synthetic_choice_rows(8, seed=3), "categories")
        npo_params = {"learning_rate": 0.01, "epochs": 2, "batch_size": 4, "project_gradients": True}
        qa_job = _submit(client, qa_id, [retain_id], {"name": "npo", "params": npo_params})
        text_params = {
            "learning_rate": 0.01,
            "epochs": 2,
            "batch_size": 4,
            "evaluate_every": 1,
            "stop_at_target": False,
        }
        text_job = _submit(client, text_id, [retain_id], {"name": "simnpo", "params": text_params})

        qa = wait_for_job(client, qa_job["job_id"], services, timeout_s=300)
        assert qa["status"] == "succeeded", (qa, [s.log() for s in services])
        final = final_metrics(qa)
        names = {(split, name) for stage, split, name, _ in final if stage == "forgotten"}
        for name in (
            "answer_probability",
            "rouge_l_recall",
            "truth_ratio",
            "extraction_strength",
            "exact_memorization",
        ):
            assert ("forget_train", name) in names and ("forget_heldout", name) in names
        for name in ("mia_auc_loss", "mia_auc_zlib", "mia_auc_min_k", "mia_auc_min_k_plus_plus", "privleak_loss"):
            assert ("forget_train", name) in names
        # The job fine-tuned first: the base LM never saw the rows, so PrivLeak is MUSE's and forget quality exists.
        assert ("forget_train", "forget_quality") in names
        assert not any(name.startswith("privleak_vs_base") for _, name in names)
        assert ("retain:categories", "accuracy") in names
        assert any(m["name"] == "probe_accuracy" for m in qa["metrics"])
        assert {n for _, n in names} <= metric_names

        # The fine-tune teaches the forget rows' answers, forgetting takes some away again (answer probability,
        # forget-train). On the tiny LM both effects are small: measured 0.0032 -> 0.0059 -> 0.0054. The drop is not
        # NPO's own doing here: with NPO's sign flipped it drops as much (tried; the same for SimNPO below), so the
        # methods' directions are pinned in tests/engine/methods; this catches a forget stage that changes nothing.
        probability = {stage: final[(stage, "forget_train", "answer_probability", None)] for stage in STAGES}
        assert probability["finetuned"] > 1.5 * probability["base"]
        assert probability["forgotten"] < 0.95 * probability["finetuned"]

        per_example = client.get(f"/v1/jobs/{qa['id']}/per-example")
        assert per_example.status_code == 200
        # The aggregate is the mean of the 8 forget-train rows' own values, at every stage.
        for stage in STAGES:
            values = per_example.json()[stage]["forget_train"]["answer_probability"]
            assert len(values) == 8 and all(0 <= v <= 1 for v in values)
            assert sum(values) / len(values) == pytest.approx(probability[stage], rel=1e-6)

        archive = client.get(f"/v1/adapters/{qa['adapter_id']}/download").content
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            manifest_file = tar.extractfile("manifest.json")
            assert manifest_file is not None
            manifest = json.load(manifest_file)
        assert manifest["seed"] == 3 and manifest["method"] == "npo"
        assert manifest["method_outcome"] == {}  # npo has nothing to add (lwf counts its never-unlearned rows)
        assert manifest["method_params"]["project_gradients"] is True
        assert set(manifest["dataset_sha256"]) == {"facts", "categories"}
        assert {"torch", "transformers", "peft"} <= set(manifest["library_versions"])

        text = wait_for_job(client, text_job["job_id"], services, timeout_s=300)
        assert text["status"] == "succeeded", (text, [s.log() for s in services])
        final = final_metrics(text)
        names = {(split, name) for stage, split, name, _ in final if stage == "forgotten"}
        for name in ("verbatim_memorization", "perplexity", "text_probability", "mia_auc_loss"):
            assert ("forget_train", name) in names
        # The fine-tune makes the passages likelier, SimNPO unlikelier again; perplexity moves the other way
        # (measured: text probability 0.0031 -> 0.0053 -> 0.0045, perplexity 324 -> 188 -> 223).
        text_probability = {stage: final[(stage, "forget_train", "text_probability", None)] for stage in STAGES}
        perplexity = {stage: final[(stage, "forget_train", "perplexity", None)] for stage in STAGES}
        assert text_probability["finetuned"] > 1.5 * text_probability["base"]
        assert text_probability["forgotten"] < 0.95 * text_probability["finetuned"]
        assert perplexity["forgotten"] > perplexity["finetuned"]
        # evaluate_every=1: one curve point per optimiser step, for forget and retain.
        curve = [p for p in text["curves"] if p["split"] == "forget_train"]
        assert [p["step"] for p in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 2
        assert {p["name"] for p in curve} == {"text_probability"}
        assert any(p["split"] == "retain:categories" for p in text["curves"])
