"""A succeeded forget job as GET /v1/jobs/{id} serves it: one metric per key with n and interval, curve points
apart, and whether forgetting reached its target in words; the catalogue refuses a second value for a key."""

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError

from lethe.forgetting import Forgetting, ScoreRise
from lethe.settings import Settings
from models.db import session_scope
from models.repositories import AdapterRepository, CurvePointRepository, JobRepository, MetricRepository
from models.tables import CurvePoint, Metric
from tests.api.conftest import forget_adapter

FORGETTING = Forgetting(
    "accuracy", 0.55, 0.76, False, "max_steps", 20, (ScoreRise("forget_heldout", 0.64, 0.80, 0.66, 0.89),)
)


def _succeeded_job(client: TestClient, settings: Settings) -> uuid.UUID:
    adapter_id = uuid.UUID(forget_adapter(client, settings))
    with session_scope(settings.database_url) as session:
        adapter = AdapterRepository(session).get_any_tenant(adapter_id)
        assert adapter is not None
        job_id = adapter.job_id
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        job.forgetting = FORGETTING.as_dict()
        job.device, job.precision = "cuda:0 (NVIDIA H200)", "bf16-autocast, bf16 weights"
        MetricRepository(session).add_many(
            [
                Metric(job_id=job_id, stage="base", split="forget_train", name="accuracy", value=0.84, n=25),
                Metric(
                    job_id=job_id,
                    stage="forgotten",
                    split="forget_train",
                    name="accuracy",
                    value=0.76,
                    n=25,
                    ci_low=0.57,
                    ci_high=0.89,
                ),
                Metric(
                    job_id=job_id, stage="forgotten", split="forget_heldout", name="probe_accuracy", value=1, layer=0
                ),
            ]
        )
        # Stored out of order: served by split, metric and step.
        CurvePointRepository(session).add_many(
            CurvePoint(job_id=job_id, split=split, name="accuracy", step=step, value=value)
            for split, step, value in [
                ("forget_train", 10, 0.9),
                ("forget_heldout", 10, 0.7),
                ("forget_train", 5, 0.96),
            ]
        )
    return job_id


def test_a_job_serves_its_metrics_curves_and_outcome_of_forgetting(
    client: TestClient, stack_settings: Settings
) -> None:
    job_id = _succeeded_job(client, stack_settings)
    job = client.get(f"/v1/jobs/{job_id}").json()
    forgotten = next(m for m in job["metrics"] if m["stage"] == "forgotten" and m["name"] == "accuracy")
    assert forgotten == {
        "stage": "forgotten",
        "split": "forget_train",
        "name": "accuracy",
        "value": 0.76,
        "layer": None,
        "n": 25,
        "ci_low": 0.57,
        "ci_high": 0.89,
    }
    assert job["curves"] == [
        {"split": "forget_heldout", "name": "accuracy", "step": 10, "value": 0.7},
        {"split": "forget_train", "name": "accuracy", "step": 5, "value": 0.96},
        {"split": "forget_train", "name": "accuracy", "step": 10, "value": 0.9},
    ]
    forgetting = job["forgetting"]
    assert (forgetting["target"], forgetting["target_reached"], forgetting["stop_reason"], forgetting["steps"]) == (
        0.55,
        False,
        "max_steps",
        20,
    )
    assert forgetting["rose"] == [
        {"split": "forget_heldout", "before": 0.64, "after": 0.8, "ci_low": 0.66, "ci_high": 0.89}
    ]
    assert forgetting["summary"] == FORGETTING.summary()
    assert "did NOT reach its target" in forgetting["summary"] and "ROSE" in forgetting["summary"]
    assert (job["device"], job["precision"]) == ("cuda:0 (NVIDIA H200)", "bf16-autocast, bf16 weights")


def test_a_queued_job_has_no_curves_and_no_outcome_yet(client: TestClient, stack_settings: Settings) -> None:
    job_id = _succeeded_job(client, stack_settings)
    with session_scope(stack_settings.database_url) as session:
        job = JobRepository(session).get_any_tenant(job_id)
        assert job is not None
        queued = JobRepository(session).add(type(job)(tenant_id=job.tenant_id, kind="forget", status="queued", spec={}))
    served = client.get(f"/v1/jobs/{queued.id}").json()
    assert (served["metrics"], served["curves"], served["forgetting"]) == ([], [], None)
    assert (served["device"], served["precision"]) == (None, None)  # no worker has claimed it


@pytest.mark.parametrize("layer", [None, 0])
def test_the_catalogue_refuses_a_second_value_for_a_metric_key(
    client: TestClient, stack_settings: Settings, layer: int | None
) -> None:
    job_id = _succeeded_job(client, stack_settings)
    name = "accuracy" if layer is None else "probe_accuracy"
    split = "forget_train" if layer is None else "forget_heldout"
    with pytest.raises(IntegrityError), session_scope(stack_settings.database_url) as session:
        MetricRepository(session).add_many(
            [Metric(job_id=job_id, stage="forgotten", split=split, name=name, value=0.5, layer=layer)]
        )
