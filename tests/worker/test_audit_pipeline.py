"""The audit pipeline in-process, on the real catalogue and S3 store: the audit a forget request asked for, a second
delivery, a tampered adapter, and a failed catalogue write that must leave no report behind."""

import json
import uuid
from pathlib import Path

import pytest

from api.services.signing_keys import ensure_signing_key
from lethe.forgetting import Forgetting
from lethe.settings import Settings
from lethe.signing import PublicKey, public_key_from_x, verify, verify_html
from lethe.specs import AuditJobSpec
from models.db import session_scope
from models.repositories import (
    AdapterRepository,
    AuditRepository,
    JobEventRepository,
    JobRepository,
    MetricRepository,
    SigningKeyRepository,
)
from storage import open_store
from storage.keys import before_forgetting_key
from tests.engine.lm.test_lora import assert_pristine
from tests.worker.test_forget_pipeline import _queued_job
from worker.engine.lm.load import BaseLMCache
from worker.pipelines.audit import _signing_key, run_audit_job
from worker.pipelines.forget import run_forget_job
from worker.pipelines.jobs import JobFailure

AUDIT = {
    "attacks": [
        {"name": "restore", "params": {"groups": ["last_1", "mlp"], "split": "forget_train"}},
        {"name": "quantize", "params": {"schemes": ["int8"], "group_size": 64, "split": "forget_train"}},
    ],
    "thresholds": {"recovery": 0.25, "attacks": {}, "trigger_drop": 0.05, "min_forgetting": 0.05},
}


@pytest.fixture(autouse=True)
def signing_key(stack_settings: Settings) -> None:
    """The installation's signing key, as the API's first start makes it (no API runs in these tests)."""
    with session_scope(stack_settings.database_url) as session:
        ensure_signing_key(stack_settings, session)


def test_a_worker_that_cannot_read_the_signing_key_fails_before_auditing(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(update={"signing_key_dir": tmp_path / "not-mounted"})
    with pytest.raises(JobFailure) as failure:
        _signing_key(settings)
    assert failure.value.code == "signing_key_missing" and "LETHE_SIGNING_KEY_DIR" in failure.value.message


def _forgotten_with_audit(
    settings: Settings, lm_dir: Path, cache: BaseLMCache, name: str
) -> tuple[uuid.UUID, uuid.UUID]:
    """Run a forget job whose request asked for AUDIT; (forget job id, audit job id), the audit job enqueued."""
    job_id = _queued_job(settings, name, f"path:{lm_dir}", audit=AUDIT)
    enqueued: list[uuid.UUID] = []
    assert run_forget_job(settings, open_store(settings), cache, job_id, enqueue_audit=enqueued.append) == "succeeded"
    assert len(enqueued) == 1
    return job_id, enqueued[0]


def test_the_requested_audit_runs_once_and_stores_a_signed_report(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    forget_job_id, audit_job_id = _forgotten_with_audit(stack_settings, tiny_lm_dir, cache, "tiny-audit")
    with session_scope(stack_settings.database_url) as session:
        forget_job = JobRepository(session).get_any_tenant(forget_job_id)
        assert forget_job is not None and forget_job.forgetting is not None
        forgetting = Forgetting.from_dict(forget_job.forgetting)
        assert store.exists(before_forgetting_key(forget_job.tenant_id, forget_job_id))
        audit_job = JobRepository(session).get_any_tenant(audit_job_id)
        assert audit_job is not None and audit_job.kind == "audit" and audit_job.status == "queued"
        assert [e.type for e in JobEventRepository(session).list(forget_job_id)][-1] == "audit_requested"

    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "succeeded"
    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "skipped"
    with session_scope(stack_settings.database_url) as session:
        audit = AuditRepository(session).get_for_job(audit_job_id)
        # 12 forget rows, half held out: 6 forget-train rows, too few for any interval to decide (MIN_ROWS = 12).
        assert audit is not None and (audit.verdict, audit.verdict_reasons) == ("inconclusive", ["too_few_rows"])
        # restore is a diagnostic: only quantize is judged, and the verdict is quantize's alone.
        results = AuditRepository(session).results(audit.id)
        assert [r.attack for r in results] == ["quantize"]
        assert audit.verdict == results[0].verdict
        for result in results:
            assert (result.n, result.inconclusive_reason, result.verdict) == (6, "too_few_rows", "inconclusive")
            assert result.confidence == pytest.approx(1 - 0.05 / len(result.variants))
            # Restore and quantize have no never-learned control.
            assert result.control_recovery is None and result.excess_recovery is None
            _check_recovery(result.before, result.after_forgetting, result.after_attack, result.chance, result.recovery)
            if result.recovery is not None:
                assert result.ci_low is not None and result.ci_high is not None
                assert result.ci_low <= result.recovery <= result.ci_high
            for variant in result.variants:
                assert variant["n"] == 6
                _check_recovery(
                    variant["before"],
                    variant["after_forgetting"],
                    variant["after_attack"],
                    result.chance,
                    variant["recovery"],
                )
        stored = {r.attack: r for r in results}
        [restore] = AuditRepository(session).diagnostics(audit.id)
        # The request's old groups (last_1, mlp) read as the MLP over windows of one layer; the tiny LM has 2.
        assert (restore.name, restore.metric, restore.split, restore.rows) == ("restore", "krs", "forget_train", 6)
        assert [v["name"] for v in restore.variants] == ["mlp@0-0", "mlp@1-1"]
        assert all(v["n"] + restore.rows_undefined == restore.rows for v in restore.variants)
        diagnostic_row = {key: getattr(restore, key) for key in ("params", "rows_undefined", "variants")}
        report_key, html_key, signature = audit.report_key, audit.report_html_key, audit.signature
        assert audit.report_html_key is not None
        # The tenant's quota counts the report's JSON and HTML.
        assert audit.report_size_bytes == len(store.get(audit.report_key or "")) + len(store.get(audit.report_html_key))
    assert report_key is not None
    signed = json.loads(store.get(report_key))
    with session_scope(stack_settings.database_url) as session:
        published = {
            row.key_id: PublicKey(row.key_id, public_key_from_x(row.public_key), row.valid_from, row.retired_at)
            for row in SigningKeyRepository(session).list()
        }
    assert verify(signed, published).valid and signed["signature"]["value"] == signature
    # The page stored beside it is the one the report signed.
    assert verify_html(signed["report"], store.get(html_key or "")).valid
    assert [a["name"] for a in signed["report"]["attacks"]] == ["quantize"]
    assert signed["report"]["verdict_reasons"] == ["too_few_rows"]
    # The catalogue's row holds the report's entry, field for field.
    for entry in signed["report"]["attacks"]:
        row = stored[entry["name"]]
        for key in ("n", "ci_low", "ci_high", "recovery", "inconclusive_reason", "worst_variant", "variants"):
            assert getattr(row, key) == entry[key], key
    [entry] = signed["report"]["diagnostics"]
    assert {key: entry[key] for key in diagnostic_row} == diagnostic_row
    assert "can be removed outright" in signed["report"]["diagnostics_note"]
    page = store.get(html_key or "").decode()
    assert "Diagnostics: where the change sits" in page and "mlp@0-0" not in page and "0–0" in page
    # The forget job's outcome of forgetting, its stage metrics (one per key, with n) and its curve points.
    report = signed["report"]
    expected = json.loads(json.dumps({**forgetting.as_dict(), "summary": forgetting.summary()}))
    assert report["forget_job"]["forgetting"] == expected
    keys = [(m["stage"], m["split"], m["name"]) for m in report["stage_metrics"]]
    assert len(keys) == len(set(keys))
    accuracies = [m for m in report["stage_metrics"] if m["name"] == "accuracy"]
    assert accuracies and all(m["n"] and m["ci_low"] <= m["value"] <= m["ci_high"] for m in accuracies)
    forget_curve = [c for c in report["training_curves"] if c["split"] == "forget_train"]
    assert len(forget_curve) == 1 and forget_curve[0]["points"][-1][0] == forgetting.steps


def _check_recovery(
    before: float, after_forgetting: float, after_attack: float, chance: float | None, recovery: float | None
) -> None:
    """recovery recomputed from the stored scores (forgetting below min_forgetting 0.05: none)."""
    floor = after_forgetting if chance is None else max(after_forgetting, chance)
    if before - floor < 0.05:
        assert recovery is None
    else:
        assert recovery == pytest.approx(min(max((after_attack - floor) / (before - floor), 0.0), 1.0))


def test_after_a_fine_tune_relearning_is_judged_against_the_never_learned_base(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    """The forget job fine-tuned first: the audit's relearn runs on the base LM too, and stores its recovery and
    the excess over it (6 heldout rows: too few to conclude, whatever the numbers)."""
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    relearn = {
        "name": "relearn",
        "params": {"examples": [2], "steps": 4, "learning_rate": 0.05, "evaluate_every": 2, "benign": False},
    }
    audit_request = {"attacks": [relearn], "thresholds": AUDIT["thresholds"]}
    job_id = _queued_job(
        stack_settings,
        "tiny-audit-5",
        f"path:{tiny_lm_dir}",
        audit=audit_request,
        finetune={"epochs": 20, "learning_rate": 0.01},
        method={"name": "gradient_ascent", "params": {"epochs": 4, "batch_size": 4, "learning_rate": 0.01}},
    )
    enqueued: list[uuid.UUID] = []
    assert run_forget_job(stack_settings, store, cache, job_id, enqueue_audit=enqueued.append) == "succeeded"
    assert run_audit_job(stack_settings, store, cache, enqueued[0]) == "succeeded"
    with session_scope(stack_settings.database_url) as session:
        audit = AuditRepository(session).get_for_job(enqueued[0])
        assert audit is not None and (audit.verdict, audit.verdict_reasons) == ("inconclusive", ["too_few_rows"])
        [result] = AuditRepository(session).results(audit.id)
        assert result.n == 6 and set(result.curves) == {"k=2", "control k=2"}
        [variant] = result.variants
        # The control's curve starts at the base LM's score and ends at its control_after; the control's gain is in
        # recovery's units, and the excess is the difference (when forgetting removed enough for a rate).
        control_curve = result.curves["control k=2"]
        assert [step for step, _ in control_curve] == [0, 2, 4]
        # The control starts where the forget job measured its base LM (stage `base`): it is the base LM.
        base_heldout = [
            m.value
            for m in MetricRepository(session).list_for_job(job_id)
            if (m.stage, m.split, m.name, m.layer) == ("base", "forget_heldout", "accuracy", None)
        ]
        assert base_heldout == [pytest.approx(control_curve[0][1])]
        # The fine-tune raised heldout above the base LM and forgetting took some of it away: a rate is defined.
        assert result.recovery is not None and result.before > result.after_forgetting
        floor = max(result.after_forgetting, result.chance or 0.0)
        gain = control_curve[-1][1] - control_curve[0][1]
        assert result.control_recovery == pytest.approx(min(max(gain / (result.before - floor), 0.0), 1.0))
        assert result.excess_recovery == pytest.approx(result.recovery - result.control_recovery)
        assert variant["excess_recovery"] == result.excess_recovery


def test_a_tampered_adapter_fails_the_audit(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    _, audit_job_id = _forgotten_with_audit(stack_settings, tiny_lm_dir, cache, "tiny-audit-2")
    get = type(store).get

    def tampering_get(self, key: str) -> bytes:
        data = get(self, key)
        return data[:-1] + bytes([data[-1] ^ 1]) if key.startswith("adapters/") else data

    monkeypatch.setattr(type(store), "get", tampering_get)
    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "failed"
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(audit_job_id)
        assert job is not None and job.error_code == "adapter_corrupt"


def test_a_failed_catalogue_write_leaves_no_report(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    _, audit_job_id = _forgotten_with_audit(stack_settings, tiny_lm_dir, cache, "tiny-audit-3")
    written: list[str] = []
    put = type(store).put

    def recording_put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        written.append(key)
        put(self, key, data, content_type)

    def failing_record(self, *args, **kwargs) -> None:
        raise RuntimeError("catalogue down")

    monkeypatch.setattr(type(store), "put", recording_put)
    monkeypatch.setattr("worker.pipelines.audit.AuditRepository.record", failing_record)
    assert run_audit_job(stack_settings, store, cache, audit_job_id) == "failed"
    assert sorted(k.rsplit("/", 1)[1] for k in written) == ["report.html", "report.json"]
    assert not any(store.exists(key) for key in written)
    with session_scope(stack_settings.database_url) as session:
        audit = AuditRepository(session).get_for_job(audit_job_id)
        assert audit is not None and audit.verdict is None and audit.report_key is None
        assert AuditRepository(session).results(audit.id) == []
        assert AdapterRepository(session).get(audit.tenant_id, audit.adapter_id) is not None


def test_an_audit_the_broker_refuses_is_failed_and_the_forget_job_still_succeeds(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    store = open_store(stack_settings)
    job_id = _queued_job(stack_settings, "tiny-audit-4", f"path:{tiny_lm_dir}", audit=AUDIT)

    def refuse(_audit_job_id: uuid.UUID) -> None:
        raise ConnectionError("connection refused")

    assert run_forget_job(stack_settings, store, BaseLMCache(tmp_path), job_id, enqueue_audit=refuse) == "succeeded"
    with session_scope(stack_settings.database_url) as session:
        adapter = AdapterRepository(session).get_for_job(job_id)
        assert adapter is not None and store.exists(adapter.object_key)
        [audit] = AuditRepository(session).list_for_adapter(adapter.id)
        audit_job = JobRepository(session).get_any_tenant(audit.job_id)
        assert audit_job is not None and (audit_job.status, audit_job.error_code) == ("failed", "broker_unavailable")
        assert "connection refused" in (audit_job.error_message or "")


def test_forget_and_audit_jobs_leave_the_cached_base_lm_as_they_found_it(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path
) -> None:
    """The worker's one copy of the base LM carries each job's adapter for a while: after a forget job, an audit,
    and an audit that fails half-way (quantize ran, then patch names a layer the LM lacks), it has no LoRA layer
    and the same weights, bit for bit, and is still the cached one."""
    cache = BaseLMCache(tmp_path)
    store = open_store(stack_settings)
    source = f"path:{tiny_lm_dir}"
    base = cache.get("tiny-audit-6", source)
    weights = {name: t.clone() for name, t in base.lm.state_dict().items()}
    failing = {"name": "patch", "params": {"layers": [99], "window": 1, "components": ["attention_output"]}}
    audit_request = {"attacks": [*AUDIT["attacks"], failing], "thresholds": AUDIT["thresholds"]}
    job_id = _queued_job(stack_settings, "tiny-audit-6", source, audit=audit_request)
    enqueued: list[uuid.UUID] = []
    assert run_forget_job(stack_settings, store, cache, job_id, enqueue_audit=enqueued.append) == "succeeded"
    assert_pristine(base.lm, weights)

    assert run_audit_job(stack_settings, store, cache, enqueued[0]) == "failed"
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(enqueued[0])
        assert job is not None and job.error_code == "attack_rejected"
        adapter = AdapterRepository(session).get_for_job(job_id)
        assert adapter is not None
        again = AuditRepository(session).create_with_job(
            adapter.tenant_id, AuditJobSpec.model_validate({"adapter_id": adapter.id, **AUDIT})
        )
    assert_pristine(base.lm, weights)

    assert run_audit_job(stack_settings, store, cache, again.job_id) == "succeeded"
    assert_pristine(base.lm, weights)
    assert cache.get("tiny-audit-6", source) is base
