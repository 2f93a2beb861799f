"""A forget job's `progress` events, written by the real pipeline on a tiny LM: rising fractions, the forgetting
curve's latest point while it trains, and a count bounded by the events' rule rather than by the steps trained."""

import uuid
from pathlib import Path

import pytest

from lethe.settings import Settings
from models.db import session_scope
from models.migrate import upgrade
from models.repositories import CurvePointRepository, JobEventRepository, JobRepository, TenantRepository
from models.tables import utcnow
from storage import open_store
from tests.conftest import forget_job_spec
from tests.worker.test_forget_pipeline import _queued_job
from worker.engine.lm.load import BaseLMCache
from worker.pipelines import forget as forget_pipeline
from worker.pipelines.forget import run_forget_job
from worker.pipelines.jobs import PROGRESS_EVENT_STEP, ProgressReporter, holding


def test_a_forget_job_writes_bounded_progress_events_with_its_curve(
    stack_settings: Settings, tiny_lm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 48 optimiser steps (6 forget-train rows, batch 1, 8 epochs), the curve measured every 12: 4 points.
    method = {
        "name": "gradient_ascent",
        "params": {"epochs": 8, "batch_size": 1, "evaluate_every": 12, "stop_at_target": False},
    }
    job_id = _queued_job(stack_settings, "tiny-progress", f"path:{tiny_lm_dir}", method=method)
    # Every report of the engine writes the job row (no 2 s pause between writes, as on a slow job): only the
    # events' own rule keeps their number down.
    row_writes = []

    def eager_reporter(settings: Settings, job_id: uuid.UUID) -> ProgressReporter:
        return ProgressReporter(settings, job_id, min_interval_s=0)

    set_progress = JobRepository.set_progress

    def counted(self: JobRepository, *args: object) -> bool:
        row_writes.append(args)
        return set_progress(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(forget_pipeline, "ProgressReporter", eager_reporter)
    monkeypatch.setattr(JobRepository, "set_progress", counted)
    assert run_forget_job(stack_settings, open_store(stack_settings), BaseLMCache(tmp_path), job_id) == "succeeded"
    with session_scope(stack_settings.database_url) as session:
        events = [(e.type, e.payload) for e in JobEventRepository(session).list(job_id)]
        curve = [
            (p.step, p.value) for p in CurvePointRepository(session).list_for_job(job_id) if p.split == "forget_train"
        ]

    assert [step for step, _ in curve] == [12, 24, 36, 48]
    progress = [payload for kind, payload in events if kind == "progress"]
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    # Consecutive events of one stage and curve point are at least a step apart.
    for earlier, later in zip(progress, progress[1:], strict=False):
        if (earlier["stage"], earlier["curve"]) == (later["stage"], later["curve"]) and later["fraction"] < 1.0:
            assert later["fraction"] - earlier["fraction"] >= PROGRESS_EVENT_STEP - 1e-4
    # While forgetting, each new curve point is sent as it is measured, the one the catalogue keeps at the end.
    sent = [(p["curve"]["step"], p["curve"]["value"]) for p in progress if p["curve"] is not None]
    assert sorted(set(sent)) == curve
    first_with_curve = next(p for p in progress if p["curve"] is not None)
    assert first_with_curve["stage"] == "forgetting" and first_with_curve["curve"]["split"] == "forget_train"
    assert 0 < first_with_curve["fraction"] < 1
    # The row was written at every step and evaluation batch; the events only by the rule (measured: 57 progress
    # events of 111 row writes, a step being about 1.3 % of this short job).
    stages = sum(1 for kind, _ in events if kind == "stage")
    assert len(progress) <= 1 / PROGRESS_EVENT_STEP + 1 + stages + len(curve)
    assert len(progress) < len(row_writes)
    assert [kind for kind, _ in events][-1] == "succeeded"


def test_a_long_stage_writes_about_a_hundred_progress_events_however_many_reports(tmp_path: Path) -> None:
    """500 reports in one stage, each a step of 0.2 %, every one written to the row: 1 + 100 progress events."""
    settings = Settings(data_dir=tmp_path)  # the embedded default: a SQLite catalogue
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        tenant = TenantRepository(session).get_or_create("progress-events")
        job_id = JobRepository(session).create_queued(tenant.id, forget_job_spec(uuid.uuid4())).id
        claim = JobRepository(session).claim(job_id, utcnow())
        assert claim is not None
    with holding(claim):
        report = ProgressReporter(settings, job_id, min_interval_s=0)
    for step in range(501):
        report("forgetting", step / 500)
    with session_scope(settings.database_url) as session:
        events = [(e.type, e.payload) for e in JobEventRepository(session).list(job_id)]
    fractions = [payload["fraction"] for kind, payload in events if kind == "progress"]
    assert [kind for kind, _ in events[:2]] == ["queued", "stage"]
    assert len(fractions) == 101 and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b - a >= PROGRESS_EVENT_STEP - 1e-9 for a, b in zip(fractions, fractions[1:], strict=False))
