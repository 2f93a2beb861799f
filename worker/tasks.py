"""Celery tasks: thin — a job id in, the pipeline runs, the catalogue holds the outcome."""

import logging
import os
import platform
import uuid
from functools import lru_cache
from typing import Any

import structlog
from celery import signals
from transformers.utils import logging as hf_logging

from lethe.hub import HubOptions
from lethe.logging_config import configure_logging
from lethe.queue import AUDIT_TASK, FORGET_TASK, enqueue_audit_job, make_celery
from lethe.settings import get_settings
from storage import ObjectStore, open_store
from worker.engine.lm.load import BaseLMCache
from worker.pipelines.audit import run_next_audit_job
from worker.pipelines.forget import run_next_forget_job
from worker.pipelines.jobs import Heartbeat, worker_liveness
from worker.startup import check_worker_devices

celery_app = make_celery(get_settings())

# Worker logs are for operators: no download/conversion progress bars, no library chatter below errors.
hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


@lru_cache(maxsize=1)
def _store() -> ObjectStore:
    return open_store(get_settings())


@lru_cache(maxsize=1)
def _lm_cache() -> BaseLMCache:
    # One per worker process: the base LM stays loaded across jobs.
    settings = get_settings()
    return BaseLMCache(settings.base_model_cache_dir, HubOptions.from_settings(settings))


# A message is a wake-up: the task claims the next queued job of its kind in fair order across tenants, which need
# not be the job the message was sent for (`job_id`, logged). One claim per message; the API's relay re-sends the
# message of a job left queued, so none waits on a lost one.
@celery_app.task(name=FORGET_TASK)
def forget_job(job_id: str) -> str:
    return run_next_forget_job(
        get_settings(),
        _store(),
        _lm_cache(),
        woken_by=uuid.UUID(job_id),
        enqueue_audit=lambda audit_job_id: enqueue_audit_job(celery_app, str(audit_job_id)),
    )


@celery_app.task(name=AUDIT_TASK)
def audit_job(job_id: str) -> str:
    return run_next_audit_job(get_settings(), _store(), _lm_cache(), woken_by=uuid.UUID(job_id))


@signals.setup_logging.connect
def _configure_logging(**_kwargs: Any) -> None:
    # A receiver of this signal replaces Celery's own logging set-up: its lines go through Lethe's handler like
    # every other (LETHE_LOG_FORMAT, LETHE_LOG_LEVEL).
    settings = get_settings()
    configure_logging("worker", json=settings.log_format == "json", level=settings.log_level)


# At import too, which is the worker process's start (`lethe worker`, `celery -A worker.tasks worker`): Celery warns
# (running as root, say) before it sends `setup_logging`, and those lines must be rendered like the rest.
_configure_logging()


@signals.celeryd_after_setup.connect
def _banner_as_a_log_line(instance: Any, **_kwargs: Any) -> None:
    # Celery prints a multi-line banner to stdout as it starts; in JSON mode a log pipeline wants one line a record.
    if get_settings().log_format == "json":
        instance.quiet = True
        logging.getLogger("lethe.worker").info(
            "celery worker %s starting: queues %s, pool %s",
            instance.hostname,
            ",".join(sorted(instance.app.amqp.queues)),
            instance.pool_cls if isinstance(instance.pool_cls, str) else instance.pool_cls.__name__,
        )


@signals.task_prerun.connect
def _bind_task_id(task_id: str | None = None, **_kwargs: Any) -> None:
    # The Celery task's id on every line it logs (the job's ids are bound once it claims one: pipelines/jobs.py).
    structlog.contextvars.bind_contextvars(task_id=task_id)


@signals.task_postrun.connect
def _unbind_task_id(**_kwargs: Any) -> None:
    structlog.contextvars.unbind_contextvars("task_id")


@signals.worker_init.connect
def _check_devices(**_kwargs: Any) -> None:
    # Before the worker consumes anything: exits with EX_CONFIG when it must not run (LETHE_REQUIRE_GPU without CUDA).
    check_worker_devices(get_settings())


_liveness: list[Heartbeat] = []


@signals.worker_ready.connect
def _start_liveness(**_kwargs: Any) -> None:
    # Beats while the process lives, whether it runs a job (the solo pool's main thread is busy) or waits.
    heartbeat = worker_liveness(get_settings(), f"{platform.node()}:{os.getpid()}")
    _liveness.append(heartbeat.start())


@signals.worker_shutdown.connect
def _stop_liveness(**_kwargs: Any) -> None:
    while _liveness:
        _liveness.pop().stop()
