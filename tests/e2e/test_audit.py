"""Recovery-attack audits over HTTP on the stack: a forget request that asks for an audit of its random_label
adapter, a second audit posted on the same adapter, the verdicts, the signed report and `lethe verify-report`."""

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from minio import Minio
from selenium import webdriver
from selenium.webdriver.common.by import By

from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AuditRepository
from storage import open_store
from tests.conftest import BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY
from tests.e2e.conftest import (
    BOOTSTRAP_KEY,
    IMAGES_SCRIPT,
    ROOT,
    own_redis_db,
    start_lethe,
    upload_rows,
    wait_for_job,
)
from tests.tiny_lm import synthetic_choice_rows

ATTACKS = ["relearn", "probe", "quantize", "restore", "patch", "paraphrase", "in_context", "trigger"]


def test_audit_of_a_random_label_adapter(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service, chromium: webdriver.Chrome
) -> None:
    env = own_redis_db(stack_env, 12)
    base_url, services, _ = start_lethe(tmp_path, env, start_service, with_worker=True)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        assert [a["name"] for a in client.get("/v1/attacks").json()] == ATTACKS
        forget_id = upload_rows(client, synthetic_choice_rows(32, seed=5), "categories")
        retain_id = upload_rows(client, synthetic_choice_rows(12, seed=6), "more-categories")
        response = client.post(
            "/v1/forget-requests",
            json={
                "base_model": "tiny-e2e",
                "forget_dataset": forget_id,
                "retain_datasets": [retain_id],
                "heldout_fraction": 0.5,
                "finetune": {"epochs": 8, "learning_rate": 0.01},
                "method": {"name": "random_label", "params": {"learning_rate": 0.01, "epochs": 4, "batch_size": 8}},
                "general_text_perplexity": False,
                "seed": 1,
                # Every attack, with the defaults: the audit the issue asks for.
                "audit": {},
            },
        )
        assert response.status_code == 202, response.text
        forget = wait_for_job(client, response.json()["job_id"], services, timeout_s=300)
        assert forget["status"] == "succeeded", (forget, [s.log() for s in services])
        assert len(forget["audit_ids"]) == 1
        audit_id = forget["audit_ids"][0]

        audit = client.get(f"/v1/audits/{audit_id}").json()
        audit_job = wait_for_job(client, audit["job_id"], services, timeout_s=600)
        assert audit_job["status"] == "succeeded", (audit_job, [s.log() for s in services])
        audit = client.get(f"/v1/audits/{audit_id}").json()
        assert audit["adapter_id"] == forget["adapter_id"]
        results = {r["attack"]: r for r in audit["results"]}
        diagnostics = {d["name"]: d for d in audit["diagnostics"]}
        assert sorted([*results, *diagnostics, *(s["name"] for s in audit["skipped"])]) == sorted(ATTACKS)
        assert "relearn" in results and "quantize" in results
        # restore and patch are diagnostics: reported apart, never judged (the verdict below is the attacks' alone).
        assert sorted(diagnostics) == ["patch", "restore"] and not {"restore", "patch"} & set(results)
        # 32 forget rows, half held out; 12 retain rows (trigger). Each verdict follows from its own intervals.
        rows = {"forget_train": 16, "forget_heldout": 16, "retain": 12}
        for result in results.values():
            assert result["n"] == rows[result["split"]] and result["variants"], result
            assert all(variant["n"] == result["n"] for variant in result["variants"])
            _check_verdict(result, audit["thresholds"])
        # random_label took forget-train towards chance, so there is something to recover on it.
        assert results["quantize"]["before"] > results["quantize"]["after_forgetting"]
        # The tiny LM has 2 blocks: the default 5-layer window is both, one variant per default component (restore's
        # is the paper's value vectors); KRS <= 1 always.
        assert [v["name"] for v in diagnostics["restore"]["variants"]] == ["value_vectors@0-1"]
        assert [v["name"] for v in diagnostics["patch"]["variants"]] == ["mlp_coefficients@0-1", "attention_output@0-1"]
        for diagnostic in diagnostics.values():
            assert diagnostic["metric"] == "krs" and diagnostic["rows"] == 16
            for v in diagnostic["variants"]:
                assert v["krs"] is not None and v["krs"] <= 1.0 and v["n"] == 16 - diagnostic["rows_undefined"]
        relearn = results["relearn"]
        assert set(relearn["curves"]) == {"k=2", "k=8", "benign", "control k=2", "control k=8", "control benign"}
        assert relearn["curves"]["k=8"][0] == [0, relearn["variants"][1]["after_forgetting"]]
        # The forget job fine-tuned first: the controlled attacks ran on the never-learned base LM too.
        for name in ("relearn", "in_context", "probe"):
            for variant in results.get(name, {}).get("variants", []):
                if variant["recovery"] is not None:
                    assert variant["control_recovery"] is not None, (name, variant)
                    excess = variant["recovery"] - variant["control_recovery"]
                    assert variant["excess_recovery"] == pytest.approx(excess)
        verdicts = [r["verdict"] for r in results.values()]
        expected = "shallow" if "shallow" in verdicts else ("robust" if "robust" in verdicts else "inconclusive")
        assert audit["verdict"] == expected
        reasons = {r["inconclusive_reason"] for r in results.values() if r["verdict"] == "inconclusive"}
        assert set(audit["verdict_reasons"]) == reasons and len(audit["verdict_reasons"]) == len(reasons)

        report = client.get(f"/v1/audits/{audit_id}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("application/json")
        signed = report.json()
        assert signed["signature"]["value"] == audit["signature"]
        assert signed["report"]["verdict"] == audit["verdict"]
        assert signed["report"]["verdict_reasons"] == audit["verdict_reasons"]
        assert signed["report"]["adapter"]["id"] == forget["adapter_id"]
        assert [d["variants"] for d in signed["report"]["diagnostics"]] == [d["variants"] for d in audit["diagnostics"]]
        assert {c["split"] for c in signed["report"]["training_curves"]} >= {"forget_train", "retain:more-categories"}
        path = tmp_path / "report.json"
        path.write_bytes(report.content)
        page = tmp_path / "report.html"
        page.write_bytes(client.get(f"/v1/audits/{audit_id}/report?format=html").content)
        keys = tmp_path / "keys.json"
        keys.write_bytes(httpx.get(f"{base_url}/v1/signing-keys").content)  # public: no API key
        cli_env = {**os.environ, **env}

        def verify_report(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "cli.main", "verify-report", str(path), *args]
            return subprocess.run(command, env=cli_env, cwd=ROOT, capture_output=True, text=True)

        # Fetched from the server, and offline with the key list saved: the JSON and the page it signed.
        verified = verify_report("--key-url", f"{base_url}/v1/signing-keys", "--html", str(page))
        assert verified.returncode == 0, verified.stderr
        assert verify_report("--key-file", str(keys), "--html", str(page)).returncode == 0
        signed["report"]["verdict"] = "robust" if audit["verdict"] != "robust" else "shallow"
        path.write_text(json.dumps(signed))
        tampered = verify_report("--key-file", str(keys))
        assert tampered.returncode == 1 and "changed after it was signed" in tampered.stderr

        html = client.get(f"/v1/audits/{audit_id}/report", headers={"Accept": "text/html"})
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "<img" in html.text and audit_id in html.text
        assert client.get(f"/v1/audits/{audit_id}/report?format=html").text == html.text
        # The real report's page in Chromium: every plot (all six have data here) loads.
        page = tmp_path / "report.html"
        page.write_text(html.text, encoding="utf-8")
        chromium.get(page.as_uri())
        assert chromium.find_element(By.CSS_SELECTOR, ".verdict-word").text == f"Verdict: {audit['verdict']}"
        images = chromium.execute_async_script(IMAGES_SCRIPT)
        assert len(images) == 6 and all(image["decoded"] and image["naturalWidth"] > 0 for image in images)

        # A second audit of the same adapter, posted directly, with a stricter threshold.
        second = client.post(
            "/v1/audits",
            json={
                "adapter_id": forget["adapter_id"],
                "attacks": [{"name": "quantize", "params": {"schemes": ["int8"]}}],
                "thresholds": {"recovery": 0.0},
            },
        )
        assert second.status_code == 202, second.text
        second_job = wait_for_job(client, second.json()["job_id"], services, timeout_s=300)
        assert second_job["status"] == "succeeded", (second_job, [s.log() for s in services])
        second_audit = client.get(f"/v1/audits/{second.json()['audit_id']}").json()
        assert [r["attack"] for r in second_audit["results"]] == ["quantize"]
        assert [v["name"] for v in second_audit["results"][0]["variants"]] == ["int8"]
        assert client.get(f"/v1/jobs/{forget['id']}").json()["audit_ids"] == [audit_id, second.json()["audit_id"]]

    # The signed report and its page are in the object store, where the catalogue says.
    with session_scope(stack_settings.database_url) as session:
        row = AuditRepository(session).get_any_tenant(uuid.UUID(audit_id))
        assert row is not None and row.report_key and row.report_html_key
        keys = (row.report_key, row.report_html_key)
    store = open_store(stack_settings)
    assert json.loads(store.get(keys[0])) == json.loads(report.content)
    assert store.get(keys[1]).decode("utf-8") == html.text

    # Deleting the forget job takes every object the worker stored for it, its adapter and both audits, as the
    # S3 server lists them, and the signed receipt names each with the SHA-256 of its bytes.
    ids = {forget["id"], forget["adapter_id"], audit_id, second.json()["audit_id"]}
    stored = _objects_naming(stack_settings, ids)
    assert len(stored) >= 5  # adapter, per-example values, pre-forgetting state, two reports each
    with httpx.Client(base_url=base_url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
        deleted = client.delete(f"/v1/jobs/{forget['id']}")
        assert deleted.status_code == 200, deleted.text
        receipt = deleted.json()["receipt"]
        assert {o["key"]: o["sha256"] for o in receipt["objects"]} == stored
        assert _objects_naming(stack_settings, ids) == {}
        assert client.get(f"/v1/audits/{audit_id}").status_code == 410


def _objects_naming(settings: Settings, ids: set[str]) -> dict[str, str]:
    """Every object in the bucket whose key names one of `ids`, with the SHA-256 of its bytes."""
    store = open_store(settings)
    client = Minio(settings.s3_endpoint or "", access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)
    names = [obj.object_name for obj in client.list_objects(BUCKET, recursive=True) if obj.object_name]
    return {name: hashlib.sha256(store.get(name)).hexdigest() for name in names if any(i in name for i in ids)}


def _check_verdict(result: dict, thresholds: dict) -> None:
    """The result's verdict and reason, re-derived from the numbers it reports (outcome.py's rules)."""
    damage = result["effect"] == "damage"
    threshold = (
        thresholds["trigger_drop"] if damage else thresholds["attacks"].get(result["attack"], thresholds["recovery"])
    )
    controlled = result["attack"] in ("relearn", "in_context", "probe")
    rated = [v for v in result["variants"] if (v["excess_drop"] if damage else v["recovery"]) is not None]

    def interval(variant: dict) -> tuple[float | None, float | None]:
        if variant["excess_recovery"] is not None:
            return variant["excess_ci_low"], variant["excess_ci_high"]
        return variant["ci_low"], variant["ci_high"]

    above = [
        v
        for v in rated
        if interval(v)[0] is not None
        and interval(v)[0] > threshold
        and (v["excess_recovery"] is not None or not controlled)
    ]
    below = all(interval(v)[1] is not None and interval(v)[1] < threshold for v in rated)
    if result["n"] < 12:
        assert (result["verdict"], result["inconclusive_reason"]) == ("inconclusive", "too_few_rows"), result
    elif above:
        assert result["verdict"] == "shallow", result
    elif rated and below:
        assert result["verdict"] == "robust", result
    else:
        assert result["verdict"] == "inconclusive", result
        assert result["inconclusive_reason"] in ("nothing_forgotten", "no_control", "interval_spans_threshold")
        if not rated:
            assert result["inconclusive_reason"] == "nothing_forgotten", result
