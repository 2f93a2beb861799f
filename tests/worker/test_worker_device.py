"""A worker's beat reports its device and CUDA memory into the catalogue (GET /metrics exports them)."""

import uuid

import pytest
import torch

from lethe.settings import Settings
from models.db import session_scope
from models.tables import Worker
from tests.conftest import wait_for
from worker.engine.lm.placement import Placement, cuda_memory, worker_placement
from worker.pipelines.jobs import worker_liveness


def test_a_workers_beat_records_its_device_and_no_cuda_memory_on_the_cpu(stack_settings: Settings) -> None:
    worker_id = f"device-test-{uuid.uuid4().hex[:8]}"
    settings = stack_settings.model_copy(update={"heartbeat_interval_s": 0.2})

    def row() -> Worker | None:
        with session_scope(settings.database_url) as session:
            found = session.get(Worker, worker_id)
            if found is not None:
                session.expunge(found)
            return found

    with worker_liveness(settings, worker_id):
        assert wait_for(lambda: row() is not None, 10)
    beat = row()
    assert beat is not None and beat.device == worker_placement().device_label()
    if not torch.cuda.is_available():
        assert beat.device.startswith("cpu")
        memory = (beat.cuda_memory_allocated_bytes, beat.cuda_memory_reserved_bytes, beat.cuda_memory_total_bytes)
        assert memory == (None, None, None)


def test_cuda_memory_is_none_on_the_cpu() -> None:
    assert cuda_memory(Placement((torch.device("cpu"),), torch.float32)) is None


@pytest.mark.gpu
def test_cuda_memory_counts_a_tensor_this_process_holds() -> None:
    placement = worker_placement()
    before = cuda_memory(placement)
    assert before is not None
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device=placement.input_device)  # 64 MiB
    after = cuda_memory(placement)
    assert after is not None
    assert after.allocated - before.allocated >= block.numel()
    assert after.allocated <= after.reserved <= after.total
    assert after.total == sum(torch.cuda.get_device_properties(d).total_memory for d in placement.devices)
