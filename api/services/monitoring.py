"""The figures GET /metrics reads at scrape time from where they live: jobs and workers from the catalogue, the
queue's depth from the broker.

Workers expose no HTTP port: each writes its liveness, device and CUDA memory into the `workers` table with every
beat (worker/pipelines/jobs.py::worker_liveness), and the API exports them here. Gauges, computed per scrape, so
every API process answers the same and nothing is kept between scrapes. A source that cannot be read gives
`lethe_metrics_source_up{source=...} 0` and leaves its families out, rather than failing the whole scrape.
"""

import logging
from collections.abc import Iterator
from datetime import timedelta

from celery import Celery
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lethe.queue import queue_depth
from lethe.settings import Settings
from models.db import get_sessionmaker
from models.repositories import JobRepository, WorkerRepository
from models.tables import utcnow

log = logging.getLogger("lethe.api")


class CatalogueCollector(Collector):
    """Jobs by kind, status and error code; live workers with their CUDA memory; messages waiting in the queue."""

    def __init__(self, settings: Settings, queue: Celery) -> None:
        self.settings, self.queue = settings, queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "lethe_metrics_source_up",
            "Whether this scrape could read the source (catalogue, broker).",
            labels=["source"],
        )
        try:
            families = list(self._catalogue())
        except Exception as exc:
            log.warning("metrics: the catalogue could not be read (%s: %s)", type(exc).__name__, exc)
            families = []
        up.add_metric(["catalogue"], 1.0 if families else 0.0)
        yield from families
        try:
            depth = GaugeMetricFamily(
                "lethe_queue_messages",
                "Job messages waiting in the broker's queue, not yet delivered to a worker.",
                labels=["queue"],
            )
            name, messages = queue_depth(self.queue)
            depth.add_metric([name], float(messages))
            up.add_metric(["broker"], 1.0)
            yield depth
        except Exception as exc:
            log.warning("metrics: the broker could not be read (%s: %s)", type(exc).__name__, exc)
            up.add_metric(["broker"], 0.0)
        yield up

    def _catalogue(self) -> Iterator[Metric]:
        since = utcnow() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        with get_sessionmaker(self.settings.database_url)() as session:
            counts = JobRepository(session).count_by_state()
            workers = WorkerRepository(session).alive_since(since)
        jobs = GaugeMetricFamily(
            "lethe_jobs",
            "Jobs in the catalogue by kind, status and error code (empty unless failed), all tenants.",
            labels=["kind", "status", "error_code"],
        )
        for kind, status, error_code, count in counts:
            jobs.add_metric([kind, status, error_code or ""], float(count))
        yield jobs
        yield GaugeMetricFamily(
            "lethe_workers_alive",
            f"Worker processes that beat within the heartbeat timeout ({self.settings.heartbeat_timeout_s:g} s).",
            value=float(len(workers)),
        )
        beat = GaugeMetricFamily(
            "lethe_worker_last_beat_timestamp_seconds",
            "When each live worker last beat (Unix time).",
            labels=["worker", "device"],
        )
        memory = GaugeMetricFamily(
            "lethe_worker_cuda_memory_bytes",
            "Each live CUDA worker's memory at its last beat: held by tensors (allocated), kept by the caching "
            "allocator (reserved), and its GPUs' total (total); summed over its GPUs.",
            labels=["worker", "device", "kind"],
        )
        for worker in workers:
            device = worker.device or ""
            beat.add_metric([worker.id, device], worker.beat_at.timestamp())
            for kind, value in (
                ("allocated", worker.cuda_memory_allocated_bytes),
                ("reserved", worker.cuda_memory_reserved_bytes),
                ("total", worker.cuda_memory_total_bytes),
            ):
                if value is not None:
                    memory.add_metric([worker.id, device, kind], float(value))
        yield beat
        yield memory
