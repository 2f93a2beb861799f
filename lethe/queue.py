"""The Celery app's configuration, shared by the API (which only sends job ids) and the worker."""

from typing import Literal

from celery import Celery
from kombu.exceptions import ChannelError

from lethe.settings import Settings

FORGET_TASK = "lethe.run_forget_job"
AUDIT_TASK = "lethe.run_audit_job"
QUEUE = "lethe"


def make_celery(settings: Settings) -> Celery:
    app = Celery("lethe")
    if settings.embedded_broker:
        # No broker server in the embedded default: kombu's filesystem transport, one folder shared by the
        # API (producer) and the worker process (consumer).
        queue_dir, control_dir = settings.broker_dir / "queue", settings.broker_dir / "control"
        for directory in (queue_dir, control_dir):
            directory.mkdir(parents=True, exist_ok=True)
        app.conf.broker_url = "filesystem://"
        app.conf.broker_transport_options = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(control_dir),
            "store_processed": False,
        }
    else:
        app.conf.broker_url = settings.broker_url
        # Redis gives an unacknowledged message to another worker after the visibility timeout: not before a job
        # can have ended (its time limit, then the hard limit's grace). A redelivery would only be one more wake-up.
        app.conf.broker_transport_options = {"visibility_timeout": settings.job_time_limit_s + 3600}
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        # The catalogue holds job state; a message is a wake-up for one claim of a job of its kind (the job id it
        # carries names the job it was sent for, for the logs). Ack after the task so a lost worker's message is
        # redelivered; a second delivery only claims the next queued job, or nothing. Messages the broker loses are
        # sent again by the API's relay, a lost worker's job re-queued by its reaper (api/app.py::maintain_jobs).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue_forget_job(app: Celery, job_id: str) -> None:
    app.send_task(FORGET_TASK, args=[job_id], queue=QUEUE)


def enqueue_audit_job(app: Celery, job_id: str) -> None:
    app.send_task(AUDIT_TASK, args=[job_id], queue=QUEUE)


# The kinds of job a worker has a task for: what the relay may send.
JobKind = Literal["forget", "audit"]
JOB_KINDS: tuple[JobKind, ...] = ("forget", "audit")


def send_job(app: Celery, kind: str, job_id: str) -> None:
    """Send the wake-up of a job of `kind` (one of JOB_KINDS)."""
    {"forget": enqueue_forget_job, "audit": enqueue_audit_job}[kind](app, job_id)


def queue_depth(app: Celery) -> tuple[str, int]:
    """The job queue's name and how many messages wait in it, not yet delivered to a worker (one a worker has
    taken and not yet acknowledged is not counted). Raises when the broker cannot be reached within a few seconds."""
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
        try:
            declared = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
        except ChannelError:
            return QUEUE, 0  # never declared: no message was ever sent to it, and no worker has started
        return QUEUE, int(declared.message_count)
