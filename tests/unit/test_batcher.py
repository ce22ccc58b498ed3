"""The dynamic batcher: jobs share batches, results go back to the right job in order, no job starves."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from engine.runtime.artifacts import ModelArtifacts
from engine.worker.batcher import BatcherClosed, DynamicBatcher
from tests.unit.test_runtime_base import RecordingBackend, backend_for, spec


@pytest.fixture
def backend(tmp_path) -> RecordingBackend:
    return backend_for(spec(), tmp_path)  # max_batch 4, doubles its input


class GatedBackend(RecordingBackend):
    """Holds every batch until the test opens the gate, so items pile up behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _run(self, batch):
        self.entered.set()
        assert self.gate.wait(10), "test never opened the gate"
        return super()._run(batch)


def job_items(job: int, count: int) -> torch.Tensor:
    """Items whose values say which job and which item they are: job * 100 + item."""
    return (job * 100 + torch.arange(count, dtype=torch.float32)).reshape(count, 1, 1)


def test_each_job_gets_its_own_outputs_in_item_order(backend: RecordingBackend) -> None:
    batcher = DynamicBatcher(backend, max_batch=4, max_delay_s=0.05)
    try:
        counts = {1: 3, 2: 9, 3: 1, 4: 6, 5: 2}
        with ThreadPoolExecutor(5) as pool:
            futures = {job: pool.submit(batcher.infer, job, job_items(job, n)) for job, n in counts.items()}
        for job, future in futures.items():
            response = future.result()
            assert response.key == job
            assert torch.equal(response.output()[0], job_items(job, counts[job]) * 2)
        assert batcher.stats.items == sum(counts.values())
        assert max(batcher.stats.sizes) <= 4
    finally:
        batcher.close()


def test_items_queued_behind_a_running_batch_are_combined_into_full_batches(tmp_path) -> None:
    backend = GatedBackend()
    backend.initialize(ModelArtifacts(spec(), tmp_path))
    batcher = DynamicBatcher(backend, max_batch=4, max_delay_s=0.0)
    try:
        first = batcher.submit("first", job_items(0, 1))
        assert backend.entered.wait(5)  # the first item runs alone (no delay allowed) and is held
        later = [batcher.submit(job, job_items(job, 1)) for job in range(1, 9)]  # eight one-item jobs queue up
        backend.gate.set()
        for job, future in enumerate(later, start=1):
            assert torch.equal(future.result(5).output()[0], job_items(job, 1) * 2)
        assert first.result(5).ok
        assert [shape[0] for shape in backend.batches] == [1, 4, 4]  # the queued jobs shared two full batches
    finally:
        backend.gate.set()
        batcher.close()


def test_first_come_first_served_so_a_stream_of_new_jobs_cannot_starve_an_old_one(tmp_path) -> None:
    backend = GatedBackend()
    backend.initialize(ModelArtifacts(spec(), tmp_path))
    batcher = DynamicBatcher(backend, max_batch=4, max_delay_s=0.0)
    try:
        blocker = batcher.submit("blocker", job_items(0, 1))
        assert backend.entered.wait(5)
        old = batcher.submit("old", job_items(1, 6))  # needs two batches
        newcomers = [batcher.submit(f"new{i}", job_items(10 + i, 2)) for i in range(6)]
        backend.gate.set()
        old_response = old.result(5)
        assert torch.equal(old_response.output()[0], job_items(1, 6) * 2)
        # batch 2 holds old[0:4]; batch 3 holds old[4:6] + new0; the old job is finished by the third batch
        assert [shape[0] for shape in backend.batches[:3]] == [1, 4, 4]
        assert all(f.result(5).ok for f in newcomers) and blocker.result(5).ok
    finally:
        backend.gate.set()
        batcher.close()


def test_items_of_different_shapes_never_share_a_batch(backend: RecordingBackend) -> None:
    batcher = DynamicBatcher(backend, max_batch=4, max_delay_s=0.02)
    try:
        small = batcher.submit("small", torch.ones(2, 1, 3))
        large = batcher.submit("large", torch.ones(2, 1, 5))
        assert small.result(5).output()[0].shape == (2, 1, 3) and large.result(5).output()[0].shape == (2, 1, 5)
        assert sorted(backend.batches) == [(2, 1, 3), (2, 1, 5)]
    finally:
        batcher.close()


def test_bad_input_is_refused_at_submit_and_a_failed_batch_fails_its_jobs(tmp_path) -> None:
    backend = backend_for(spec(), tmp_path, fail_when_items=3)
    batcher = DynamicBatcher(backend, max_batch=4, max_delay_s=0.0)
    try:
        with pytest.raises(ValueError, match="floating point"):
            batcher.submit("ints", torch.ones(2, 1, 2, dtype=torch.int32))
        failed = batcher.infer("three", torch.ones(3, 1, 2))
        assert not failed.ok and "device fell over" in failed.error
        assert batcher.infer("two", torch.ones(2, 1, 2)).ok  # the batcher keeps working
    finally:
        batcher.close()


def test_close_runs_what_is_queued_then_refuses(backend: RecordingBackend) -> None:
    batcher = DynamicBatcher(backend, max_batch=4, max_delay_s=30.0)  # would wait 30 s for company
    pending = batcher.submit("lonely", job_items(1, 1))
    batcher.close()
    assert pending.result(0).ok
    with pytest.raises(BatcherClosed):
        batcher.submit("late", job_items(2, 1))
