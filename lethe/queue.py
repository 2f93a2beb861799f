"""The Celery app's configuration, shared by the API (which only sends job ids) and the worker."""

from celery import Celery

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
        # A forget job can run for hours; redelivery before then would only hit the claim guard.
        app.conf.broker_transport_options = {"visibility_timeout": 12 * 3600}
    app.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        # The catalogue holds job state; the broker only carries ids. Ack after the task so a lost worker's
        # message is redelivered; the job's claim makes a second delivery harmless.
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
