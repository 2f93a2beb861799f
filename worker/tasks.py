"""Celery tasks: thin — a job id in, the pipeline runs, the catalogue holds the outcome."""

import uuid
from functools import lru_cache

from lethe.settings import get_settings
from storage import ObjectStore, open_store
from worker.engine.lm import BaseLMCache
from worker.pipelines.forget import run_forget_job
from worker.queue import FORGET_TASK, make_celery

celery_app = make_celery(get_settings())


@lru_cache(maxsize=1)
def _store() -> ObjectStore:
    return open_store(get_settings())


@lru_cache(maxsize=1)
def _lm_cache() -> BaseLMCache:
    # One per worker process: the base LM stays loaded across jobs.
    return BaseLMCache(get_settings().base_model_cache_dir)


@celery_app.task(name=FORGET_TASK)
def forget_job(job_id: str) -> str:
    return run_forget_job(get_settings(), _store(), _lm_cache(), uuid.UUID(job_id))
