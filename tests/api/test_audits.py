"""POST /v1/audits, GET /v1/audits/{id}, its report, GET /v1/attacks, and audits asked for with a forget request."""

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lethe.attacks import ATTACKS
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AuditRepository, JobRepository
from tests.api.conftest import CHOICE_ROWS, forget_adapter, upload

ATTACK_NAMES = ["relearn", "probe", "quantize", "restore", "patch", "paraphrase", "in_context", "trigger"]


def _audit_rows(settings: Settings) -> int:
    from sqlalchemy import func, select

    from models.tables import Audit

    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(Audit)) or 0)


def test_attacks_are_published_with_their_schemas(client: TestClient) -> None:
    response = client.get("/v1/attacks")
    assert response.status_code == 200
    attacks = {a["name"]: a for a in response.json()}
    assert list(attacks) == ATTACK_NAMES
    assert attacks["relearn"]["params"]["properties"]["examples"]["default"] == [2, 8]
    assert attacks["trigger"]["needs_retain"] is True
    assert attacks["probe"]["kinds"] == ["choice", "qa"]
    # restore and patch are diagnostics: requested like attacks, reported apart, never judged.
    assert {name for name, a in attacks.items() if a["diagnostic"]} == {"restore", "patch"}
    assert attacks["restore"]["params"]["properties"]["window"]["default"] == 5
    assert attacks["patch"]["params"]["properties"]["components"]["default"] == ["mlp_coefficients", "attention_output"]
    assert "can be removed outright" in attacks["restore"]["description"]
    # The attacks that can succeed by ordinary learning are judged against a never-learned control.
    assert [name for name, attack in attacks.items() if attack["controlled"]] == ["relearn", "probe", "in_context"]
    assert "never shallow" in attacks["relearn"]["verdict_rule"] and "no_control" in attacks["probe"]["verdict_rule"]
    assert "no_control" not in attacks["quantize"]["verdict_rule"]
    assert "nothing_forgotten" not in attacks["trigger"]["verdict_rule"]
    judged = [a for a in attacks.values() if not a["diagnostic"]]
    assert all("too_few_rows (a variant on fewer than 12 rows)" in a["verdict_rule"] for a in judged)
    assert all(a["verdict_rule"].startswith("Never judged") for a in attacks.values() if a["diagnostic"])


def test_an_old_restore_request_stays_valid(client: TestClient, stack_settings: Settings) -> None:
    """Requests written for the restore attack (groups) and patch (layers) are accepted, translated."""
    adapter_id = forget_adapter(client, stack_settings)
    attacks = [
        {"name": "restore", "params": {"groups": ["mlp", "per_layer"]}},
        {"name": "patch", "params": {"layers": [1]}},
    ]
    response = client.post("/v1/audits", json={"adapter_id": adapter_id, "attacks": attacks})
    assert response.status_code == 202, response.text
    audit = client.get(f"/v1/audits/{response.json()['audit_id']}").json()
    assert audit["attacks"] == [
        {"name": "restore", "params": {"components": ["mlp"], "window": 1, "layers": "all", "split": "forget_train"}},
        {
            "name": "patch",
            "params": {
                "components": ["mlp_coefficients", "attention_output"],
                "window": 5,
                "layers": [1],
                "split": "forget_train",
            },
        },
    ]
    assert audit["diagnostics"] == []


def test_diagnostics_sweep_every_layer_on_request(client: TestClient, stack_settings: Settings) -> None:
    """`layers: "all"` asks for Hong et al.'s sweep (a window around every layer) instead of the default tiles."""
    adapter_id = forget_adapter(client, stack_settings)
    attacks = [{"name": "patch", "params": {"layers": "all"}}, {"name": "restore", "params": {"window": 1}}]
    response = client.post("/v1/audits", json={"adapter_id": adapter_id, "attacks": attacks})
    assert response.status_code == 202, response.text
    audit = client.get(f"/v1/audits/{response.json()['audit_id']}").json()
    assert [(a["name"], a["params"]["layers"], a["params"]["window"]) for a in audit["attacks"]] == [
        ("patch", "all", 5),
        ("restore", None, 1),
    ]


def test_diagnostics_are_read_back_apart_from_the_results(client: TestClient, stack_settings: Settings) -> None:
    from models.tables import AuditDiagnostic

    audit_id = client.post("/v1/audits", json={"adapter_id": forget_adapter(client, stack_settings)}).json()["audit_id"]
    variant = {
        "name": "value_vectors@0-1",
        "component": "value_vectors",
        "first_layer": 0,
        "last_layer": 1,
        "krs": 0.25,
        "n": 10,
        "ci_low": 0.1,
        "ci_high": 0.4,
    }
    row = {
        "name": "restore",
        "params": {"components": ["value_vectors"], "window": 5, "layers": None, "split": "forget_train"},
        "metric": "krs",
        "split": "forget_train",
        "rows": 12,
        "rows_undefined": 2,
        "variants": [variant],
        "skipped_components": {"attention": "the adapter has no parameter of this component"},
    }
    with session_scope(stack_settings.database_url) as session:
        AuditRepository(session).add_diagnostics([AuditDiagnostic(audit_id=uuid.UUID(audit_id), **row)])
    audit = client.get(f"/v1/audits/{audit_id}").json()
    assert audit["diagnostics"] == [row] and audit["results"] == []


def test_a_judged_audit_shows_every_interval_control_and_reason(client: TestClient, stack_settings: Settings) -> None:
    """Results written as the pipeline writes them (the report's entries, here the report factory's) come back
    through GET /v1/audits/{id} field for field."""
    from models.tables import AuditResult
    from tests.worker.report_factory import build_report

    audit_id = client.post("/v1/audits", json={"adapter_id": forget_adapter(client, stack_settings)}).json()["audit_id"]
    report = build_report(attacks=["relearn", "paraphrase", "trigger"])
    columns = set(AuditResult.__table__.columns.keys())
    with session_scope(stack_settings.database_url) as session:
        AuditRepository(session).record(
            uuid.UUID(audit_id),
            [
                AuditResult(
                    audit_id=uuid.UUID(audit_id),
                    attack=entry["name"],
                    **{k: v for k, v in entry.items() if k in columns},
                )
                for entry in report["attacks"]
            ],
            verdict=report["verdict"],
            verdict_reasons=report["verdict_reasons"],
            report_key="k.json",
            report_html_key="k.html",
            signature="0" * 64,
            signing_key_id="k",
            skipped=[],
            report_size_bytes=0,
        )
    audit = client.get(f"/v1/audits/{audit_id}").json()
    assert (audit["verdict"], audit["verdict_reasons"]) == (
        "shallow",
        ["nothing_forgotten", "interval_spans_threshold"],
    )
    results = {r["attack"]: r for r in audit["results"]}
    for entry in report["attacks"]:
        result = results[entry["name"]]
        for key in ("n", "confidence", "ci_low", "ci_high", "control_recovery", "excess_recovery", "excess_ci_low"):
            assert result[key] == entry[key], key
        assert result["inconclusive_reason"] == entry["inconclusive_reason"]
        assert result["variants"] == entry["variants"]
    assert results["relearn"]["excess_recovery"] == pytest.approx(
        results["relearn"]["recovery"] - results["relearn"]["control_recovery"]
    )
    assert results["paraphrase"]["inconclusive_reason"] == "nothing_forgotten"


def test_submit_fills_defaults_and_creates_a_queued_audit(client: TestClient, stack_settings: Settings) -> None:
    adapter_id = forget_adapter(client, stack_settings)
    body = {"adapter_id": adapter_id, "attacks": [{"name": "quantize", "params": {"schemes": ["int4"]}}]}
    response = client.post("/v1/audits", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    audit = client.get(f"/v1/audits/{accepted['audit_id']}").json()
    assert audit["status"] == "queued" and audit["verdict"] is None and audit["results"] == []
    assert audit["attacks"] == [
        {"name": "quantize", "params": {"schemes": ["int4"], "group_size": 64, "split": "forget_train"}}
    ]
    assert audit["thresholds"] == {"recovery": 0.25, "attacks": {}, "trigger_drop": 0.05, "min_forgetting": 0.05}
    job = client.get(f"/v1/jobs/{accepted['job_id']}").json()
    assert job["kind"] == "audit" and job["audit_ids"] == [accepted["audit_id"]]


def test_no_attacks_means_every_attack_that_applies(client: TestClient, stack_settings: Settings) -> None:
    with_retain = client.post("/v1/audits", json={"adapter_id": forget_adapter(client, stack_settings)}).json()
    assert [a["name"] for a in client.get(f"/v1/audits/{with_retain['audit_id']}").json()["attacks"]] == ATTACK_NAMES
    text = forget_adapter(client, stack_settings, kind="text", with_retain=False)
    text_audit = client.post("/v1/audits", json={"adapter_id": text}).json()
    names = [a["name"] for a in client.get(f"/v1/audits/{text_audit['audit_id']}").json()["attacks"]]
    assert names == [n for n in ATTACK_NAMES if "text" in ATTACKS.get(n).kinds and not ATTACKS.get(n).needs_retain]


@pytest.mark.parametrize(
    ("attacks", "thresholds", "expected"),
    [
        ([{"name": "amnesia"}], {}, "attacks[0].name: unknown attack 'amnesia'; allowed: relearn, probe"),
        ([{"name": "relearn", "params": {"steps": 0}}], {}, "attacks[0].params.steps"),
        ([{"name": "relearn", "params": {"colour": 1}}], {}, "attacks[0].params.colour"),
        ([{"name": "patch"}, {"name": "patch"}], {}, "attacks: patch requested twice"),
        ([{"name": "patch", "params": {"layers": "every"}}], {}, "attacks[0].params.layers"),
        ([{"name": "patch"}], {"attacks": {"amnesia": 0.5}}, "thresholds.attacks"),
        ([{"name": "patch"}], {"recovery": 2}, "thresholds.recovery"),
    ],
)
def test_bad_audit_requests_are_named_and_change_nothing(
    client: TestClient, stack_settings: Settings, attacks: list[dict], thresholds: dict, expected: str
) -> None:
    adapter_id = forget_adapter(client, stack_settings)
    before = _audit_rows(stack_settings)
    response = client.post("/v1/audits", json={"adapter_id": adapter_id, "attacks": attacks, "thresholds": thresholds})
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert _audit_rows(stack_settings) == before


def test_attacks_must_fit_the_forget_job(client: TestClient, stack_settings: Settings) -> None:
    text = forget_adapter(client, stack_settings, kind="text", with_retain=False)
    response = client.post("/v1/audits", json={"adapter_id": text, "attacks": [{"name": "probe"}]})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "attacks[0].name: probe does not apply to a text forget set (it supports: choice, qa)"
    )
    response = client.post("/v1/audits", json={"adapter_id": text, "attacks": [{"name": "trigger"}]})
    assert response.status_code == 422
    assert "trigger needs the forget job to have had retain datasets" in response.json()["detail"]


def test_unknown_or_foreignforget_adapter(client: TestClient, app_client: TestClient, stack_settings: Settings) -> None:
    missing = str(uuid.uuid4())
    response = client.post("/v1/audits", json={"adapter_id": missing})
    assert response.status_code == 422
    assert response.json()["detail"] == f"adapter_id: adapter {missing} not found"
    adapter_id = forget_adapter(client, stack_settings)
    audit_id = client.post("/v1/audits", json={"adapter_id": adapter_id}).json()["audit_id"]
    from api.services.auth import create_key

    with session_scope(stack_settings.database_url) as session:
        other_key = create_key(session, f"tenant-{uuid.uuid4().hex[:12]}")
    other = {"X-API-Key": other_key}
    assert app_client.post("/v1/audits", json={"adapter_id": adapter_id}, headers=other).status_code == 422
    assert app_client.get(f"/v1/audits/{audit_id}", headers=other).status_code == 404
    assert app_client.get(f"/v1/audits/{audit_id}/report", headers=other).status_code == 404


def test_report_is_not_found_until_the_audit_succeeds(client: TestClient, stack_settings: Settings) -> None:
    audit_id = client.post("/v1/audits", json={"adapter_id": forget_adapter(client, stack_settings)}).json()["audit_id"]
    response = client.get(f"/v1/audits/{audit_id}/report")
    assert response.status_code == 404
    assert (
        response.json()["detail"] == f"audit {audit_id} has no report yet (its job is queued; written when it succeeds)"
    )


def _forget_request(client: TestClient, **overrides: Any) -> dict[str, Any]:
    forget = upload(client, CHOICE_ROWS, name="forget").json()["id"]
    body = {
        "base_model": "tiny-registered",
        "forget_dataset": forget,
        "method": {"name": "random_label"},
    }
    body.update(overrides)
    return body


def test_forget_request_can_ask_for_an_audit(client: TestClient, stack_settings: Settings) -> None:
    body = _forget_request(client, audit={"attacks": [{"name": "restore", "params": {"groups": ["mlp"]}}]})
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 202, response.text
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(uuid.UUID(response.json()["job_id"]))
        assert job is not None
        assert job.spec["audit"]["attacks"] == [
            {"name": "restore", "params": {"components": ["mlp"], "window": 5, "layers": None, "split": "forget_train"}}
        ]
        assert job.spec["audit"]["thresholds"]["recovery"] == 0.25
        assert AuditRepository(session).get_for_job(job.id) is None  # created when the forget job succeeds


def test_forget_request_with_a_bad_audit_creates_no_job(client: TestClient) -> None:
    body = _forget_request(client, audit={"attacks": [{"name": "trigger"}]})
    response = client.post("/v1/forget-requests", json=body)
    assert response.status_code == 422
    assert (
        response.json()["detail"] == "audit.attacks[0].name: trigger needs the forget job to have had retain datasets"
    )
    assert client.get("/v1/jobs").json()["items"] == []
