"""The Python SDK generated from openapi.json (`make sdk`: scripts/build_sdk.sh into build/sdk/) against a running
Lethe on the stack: upload, forget, watch, download and audit, every call through the generated client."""

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from api.routes.audits import REPORT_CSP
from lethe.settings import Settings
from tests.conftest import REDIS_DB
from tests.e2e.conftest import BOOTSTRAP_KEY, ROOT, Service, own_redis_db, start_lethe
from tests.tiny_lm import synthetic_choice_rows

SDK_DIR = ROOT / "build" / "sdk" / "lethe-client"


@pytest.fixture
def sdk_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The generated package on sys.path (never installed into the shared venv). CI builds it before pytest, so
    there its absence is a failure; elsewhere the test is skipped until `make sdk` has run."""
    if not (SDK_DIR / "lethe_client" / "__init__.py").is_file():
        message = f"the generated SDK is missing at {SDK_DIR}: `make sdk` (scripts/build_sdk.sh) builds it"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and `make test` runs it before pytest")
        pytest.skip(message)
    monkeypatch.syspath_prepend(str(SDK_DIR))
    return SDK_DIR


def _watch(client: Any, job_id: uuid.UUID, services: list[Service], timeout_s: float) -> tuple[list[str], Any]:
    """Follow the job's events page (GET /v1/jobs/{id}/events, JSON) through the SDK until it says the job has ended;
    the events' types in order, and the job as GET /v1/jobs/{id} then gives it."""
    from lethe_client.api.jobs import get_job, get_job_events
    from lethe_client.models import JobEventPage, JobOut

    deadline, after, types = time.monotonic() + timeout_s, 0, []
    while time.monotonic() < deadline:
        page = get_job_events.sync(job_id, client=client, after=after)
        assert isinstance(page, JobEventPage), page
        assert [event.seq for event in page.items] == list(range(after + 1, after + 1 + len(page.items)))
        types += [event.type_ for event in page.items]  # `type` is `type_` in Python
        after = page.next_after
        if page.terminal:
            job = get_job.sync(job_id, client=client)
            assert isinstance(job, JobOut), job
            return types, job
        assert all(s.process.poll() is None for s in services), [s.log() for s in services]
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end in {timeout_s}s:\n" + "\n".join(s.log() for s in services))


def test_the_generated_sdk_uploads_forgets_downloads_and_audits(
    tmp_path: Path, stack_env: dict[str, str], stack_settings: Settings, start_service, sdk_path: Path
) -> None:
    """`stack_settings`: the catalogue migrated."""
    from lethe_client import AuthenticatedClient
    from lethe_client.api.adapters import download_adapter, get_adapter
    from lethe_client.api.audits import get_audit, get_audit_report, get_audit_report_html, submit_audit
    from lethe_client.api.datasets import get_dataset, upload_dataset
    from lethe_client.api.jobs import get_job_per_example, submit_forget_request
    from lethe_client.models import (
        AdapterOut,
        AttackIn,
        AttackInParams,
        AuditAccepted,
        AuditOut,
        AuditRequestIn,
        DatasetOut,
        DatasetUpload,
        ErrorBody,
        ForgetRequestIn,
        JobAccepted,
        MethodIn,
        MethodInParams,
        PerExampleValues,
        SignedReport,
    )
    from lethe_client.types import File

    base_url, services, _ = start_lethe(tmp_path, own_redis_db(stack_env, REDIS_DB), start_service, with_worker=True)
    client = AuthenticatedClient(
        base_url=base_url, token=BOOTSTRAP_KEY, prefix="", auth_header_name="X-API-Key", raise_on_unexpected_status=True
    )
    with client:
        # Upload: the multipart body is the spec's DatasetUpload, the file a File; 201 with where the dataset is.
        content = "".join(json.dumps(row) + "\n" for row in synthetic_choice_rows(24, seed=3)).encode()
        upload = DatasetUpload(
            file=File(io.BytesIO(content), "rows.jsonl", "application/x-ndjson"), name="sdk", kind="choice"
        )
        uploaded = upload_dataset.sync_detailed(client=client, body=upload)
        assert uploaded.status_code == 201 and isinstance(uploaded.parsed, DatasetOut), uploaded.content
        dataset = uploaded.parsed
        assert (dataset.kind, dataset.rows) == ("choice", 24)
        assert dataset.sha256 == hashlib.sha256(content).hexdigest()
        assert uploaded.headers["location"] == f"/v1/datasets/{dataset.id}"
        assert get_dataset.sync(dataset.id, client=client) == dataset

        # Submit a small forget request (random labels, no probes) and watch its job's events until it ends.
        method = MethodIn(
            name="random_label",
            params=MethodInParams.from_dict({"learning_rate": 0.01, "epochs": 2, "batch_size": 4}),
        )
        request = ForgetRequestIn(
            base_model="tiny-e2e", forget_dataset=dataset.id, method=method, probe=False, general_text_perplexity=False
        )
        accepted = submit_forget_request.sync_detailed(client=client, body=request)
        assert accepted.status_code == 202 and isinstance(accepted.parsed, JobAccepted), accepted.content
        assert accepted.parsed.status == "queued"
        assert accepted.headers["location"] == f"/v1/jobs/{accepted.parsed.job_id}"
        events, job = _watch(client, accepted.parsed.job_id, services, timeout_s=300)
        assert (job.status, job.kind) == ("succeeded", "forget"), (job.error, [s.log() for s in services])
        assert events[:2] == ["queued", "running"] and events[-1] == "succeeded" and "progress" in events, events
        assert isinstance(job.adapter_id, uuid.UUID) and job.metrics and job.forgetting is not None

        # The per-example values, parsed: {stage: {split: {metric: [one per row]}}}; 12 forget-train rows, whose
        # mean is the job's accuracy.
        per_example = get_job_per_example.sync(job.id, client=client)
        assert isinstance(per_example, PerExampleValues)
        correct = per_example["forgotten"]["forget_train"]["correct"]
        assert len(correct) == 12 and set(correct) <= {0.0, 1.0}
        accuracy = [
            m.value for m in job.metrics if (m.stage, m.split, m.name) == ("forgotten", "forget_train", "accuracy")
        ]
        assert accuracy == [pytest.approx(sum(correct) / 12)]

        # Download the adapter: the bytes of a tar.gz whose sha256 is the adapter's and the response header's.
        adapter = get_adapter.sync(job.adapter_id, client=client)
        assert isinstance(adapter, AdapterOut)
        downloaded = download_adapter.sync_detailed(adapter.id, client=client)
        assert downloaded.status_code == 200 and isinstance(downloaded.parsed, File)
        archive = downloaded.parsed.payload.read()
        assert hashlib.sha256(archive).hexdigest() == adapter.sha256 == downloaded.headers["x-checksum-sha256"]
        assert len(archive) == adapter.size_bytes
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            names = {Path(name).name for name in tar.getnames()}
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names

        # Audit it with one cheap attack, and watch the audit's job.
        audit_request = AuditRequestIn(
            adapter_id=adapter.id,
            attacks=[AttackIn(name="quantize", params=AttackInParams.from_dict({"schemes": ["int8"]}))],
        )
        submitted = submit_audit.sync_detailed(client=client, body=audit_request)
        assert submitted.status_code == 202 and isinstance(submitted.parsed, AuditAccepted), submitted.content
        audit_id = submitted.parsed.audit_id
        assert submitted.headers["location"] == f"/v1/audits/{audit_id}"
        events, audit_job = _watch(client, submitted.parsed.job_id, services, timeout_s=300)
        assert events[:2] == ["queued", "running"] and events[-1] == "succeeded", events
        assert (audit_job.status, audit_job.kind) == ("succeeded", "audit"), (
            audit_job.error,
            [s.log() for s in services],
        )
        audit = get_audit.sync(audit_id, client=client)
        assert isinstance(audit, AuditOut) and audit.status == "succeeded"
        assert [r.attack for r in audit.results] == ["quantize"]
        assert audit.verdict in ("robust", "shallow", "inconclusive")

        # The signed report, parsed as JSON; the HTML page as text, with its security headers.
        report = get_audit_report.sync_detailed(audit_id, client=client)
        assert isinstance(report.parsed, SignedReport), report.content
        assert report.parsed.report["verdict"] == audit.verdict
        assert report.parsed.report["adapter"]["id"] == str(adapter.id)
        assert report.parsed.signature.additional_properties  # its fields are the signing scheme's
        assert report.headers["x-content-type-options"] == "nosniff"
        html = get_audit_report_html.sync_detailed(audit_id, client=client)
        assert isinstance(html.parsed, str) and html.parsed.startswith("<!DOCTYPE html>")
        assert str(audit_id) in html.parsed and "<img" in html.parsed
        assert html.headers["content-type"].startswith("text/html")
        assert html.headers["content-security-policy"] == REPORT_CSP
        assert html.headers["x-content-type-options"] == "nosniff"

        # An error is parsed too: the spec's ErrorBody.
        missing = get_audit_report.sync_detailed(uuid.uuid4(), client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, ErrorBody)
        assert missing.parsed.error == "not_found"
