"""What a worker process checks before it takes a job: that it may compute where it would (LETHE_REQUIRE_GPU,
LETHE_WORKER_GPUS against the GPUs it sees), that LETHE_ACTIVATION_BUDGET_MB, LETHE_ALLOCATOR and the CPU matmul
library's cache capacities read (bounded where unset, `native_caches.py`), and the log line saying where that is and
which allocator it runs with.

Run by `lethe worker` before Celery starts, by the Celery app's `worker_init` (for `celery -A worker.tasks worker`)
and by `lethe serve` before it starts its embedded worker. A GPU worker that quietly trains on the CPU takes jobs and
runs each one tens of times slower; one that cannot start says why and stops, and its supervisor sees it.
"""

import logging
import os
import sys

from lethe.settings import Settings
from worker.allocator import allocator_label, requested
from worker.engine.lm.placement import Placement, PlacementError, cuda_report, worker_placement
from worker.engine.training.checkpointing import activation_budget_bytes
from worker.native_caches import bound_native_caches, native_cache_settings

log = logging.getLogger("lethe.worker")

# sysexits.h's EX_CONFIG: a configuration error, which restarting the worker cannot fix (`lethe serve` does not).
EX_CONFIG = 78


def startup_problem(settings: Settings) -> str | None:
    """Why this worker must not start, or None."""
    try:
        placement = worker_placement()
        activation_budget_bytes()
        requested()
        native_cache_settings(os.environ)
    except (PlacementError, ValueError) as exc:  # AllocatorError is a ValueError
        return str(exc)
    if settings.require_gpu and placement.input_device.type != "cuda":
        return (
            f"LETHE_REQUIRE_GPU=1 but CUDA is not available to this worker ({cuda_report()}): refusing to start "
            "rather than train on the CPU; unset LETHE_REQUIRE_GPU to allow CPU workers"
        )
    return None


def check_worker_devices(settings: Settings) -> Placement:
    """This worker's placement, logged; SystemExit(EX_CONFIG) with the reason on stderr when it must not start."""
    problem = startup_problem(settings)
    if problem is not None:
        print(f"lethe worker: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG)
    placement = worker_placement()
    # Before the process's first matmul, which is when the libraries read them.
    caches = bound_native_caches()
    log.info(
        "this worker computes on %s in %s; memory allocator: %s; oneDNN/ideep cache capacities: %s",
        placement.device_label(),
        placement.precision_label(),
        allocator_label(),
        "/".join(caches.values()),
    )
    return placement
