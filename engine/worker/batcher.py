"""Dynamic batching: items of several concurrent jobs share one model call (Triton-style).

Each model gets one :class:`DynamicBatcher`. Jobs running on the worker's compute
threads submit their preprocessed items (slices or volumes) and wait. A dispatcher
thread forms a batch when ``max_batch`` items of one shape are waiting, or when the
oldest waiting item has waited ``max_delay_s``, whichever is first. Items are taken
first come, first served, so no job starves; a job bigger than one batch is split
over several and its outputs are joined back in order. At most ``max_in_flight``
batches run at once (one on a CPU; two on a GPU so a copy overlaps a compute), and
while they run new items queue up and make the next batch larger.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from engine.logs import get_logger
from engine.runtime.base import Backend, InferenceRequest, InferenceResponse

log = get_logger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher was closed before the request could run."""


@dataclass
class _Pending:
    """One submitted request and the output pieces gathered for it so far."""

    key: Hashable
    inputs: torch.Tensor
    future: Future
    arrived: float
    taken: int = 0
    received: int = 0
    pieces: dict[int, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    failed: bool = False

    @property
    def count(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def item_kind(self) -> tuple[tuple[int, ...], torch.dtype, torch.device]:
        return tuple(self.inputs.shape[1:]), self.inputs.dtype, self.inputs.device


@dataclass
class BatcherStats:
    """Counts for benchmarks and metrics: batches run, items run, and how many batches had each size."""

    batches: int = 0
    items: int = 0
    sizes: Counter = field(default_factory=Counter)

    @property
    def mean_batch(self) -> float:
        """Average items per batch (0 before the first batch)."""
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher:
    """Gathers items from concurrent jobs into batches for one backend."""

    def __init__(self, backend: Backend, *, max_batch: int, max_delay_s: float, max_in_flight: int = 1,
                 name: str = "model") -> None:
        if max_batch < 1 or max_in_flight < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_in_flight must be >= 1 and max_delay_s >= 0")
        self.backend = backend
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.stats = BatcherStats()
        self._queue: deque[_Pending] = deque()
        self._condition = threading.Condition()
        self._slots = threading.Semaphore(max_in_flight)
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"scanstream-batch-{name}")
        self._closed = False
        self._deliver_lock = threading.Lock()
        self._ids = itertools.count()
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"scanstream-batcher-{name}", daemon=True)
        self._dispatcher.start()

    def submit(self, key: Hashable, inputs: torch.Tensor) -> Future:
        """Queue ``inputs`` (items on the first axis); the future gives an :class:`InferenceResponse`.

        Inputs the model cannot take raise ``ValueError`` here, before queueing: that is
        the job's data, not a fault of the batch.
        """
        problem = self.backend.check_request(inputs)
        if problem is not None:
            raise ValueError(problem)
        future: Future = Future()
        with self._condition:
            if self._closed:
                raise BatcherClosed(f"batcher for {self.name!r} is closed")
            self._queue.append(_Pending(key, inputs, future, time.monotonic()))
            self._condition.notify_all()
        return future

    def infer(self, key: Hashable, inputs: torch.Tensor, timeout: float | None = None) -> InferenceResponse:
        """Submit and wait for the response."""
        return self.submit(key, inputs).result(timeout)

    def close(self) -> None:
        """Run what is queued, then stop the dispatcher and the batch threads."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._dispatcher.join()
        self._pool.shutdown(wait=True)

    def _waiting_items(self, kind: tuple) -> int:
        return sum(p.count - p.taken for p in self._queue if p.item_kind == kind)

    def _dispatch(self) -> None:
        """Form batches until closed and drained."""
        while True:
            self._slots.acquire()
            with self._condition:
                batch = self._next_batch()
            if batch is None:
                self._slots.release()
                return
            self._pool.submit(self._run, batch)

    def _next_batch(self) -> list[tuple[_Pending, int, int]] | None:
        """Wait (holding the condition) until a batch is due; return its pieces (request, start, stop)."""
        while True:
            while self._queue and self._queue[0].taken >= self._queue[0].count:
                self._queue.popleft()
            if not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
                continue
            head = self._queue[0]
            due = head.arrived + self.max_delay_s
            now = time.monotonic()
            if self._closed or now >= due or self._waiting_items(head.item_kind) >= self.max_batch:
                return self._take(head.item_kind)
            self._condition.wait(due - now)

    def _take(self, kind: tuple) -> list[tuple[_Pending, int, int]]:
        """Up to ``max_batch`` items of ``kind``, first come first served."""
        pieces: list[tuple[_Pending, int, int]] = []
        room = self.max_batch
        for pending in self._queue:
            if room == 0:
                break
            if pending.item_kind != kind or pending.taken >= pending.count:
                continue
            start = pending.taken
            stop = min(pending.count, start + room)
            pending.taken = stop
            room -= stop - start
            pieces.append((pending, start, stop))
        return pieces

    def _run(self, pieces: list[tuple[_Pending, int, int]]) -> None:
        """Run one batch and hand each piece's outputs to its request."""
        try:
            requests = [InferenceRequest(next(self._ids), p.inputs[start:stop]) for p, start, stop in pieces]
            items = sum(stop - start for _, start, stop in pieces)
            try:
                responses = self.backend.execute(requests)
            except Exception as error:  # an unexpected backend fault goes to the waiting jobs, not to a lost thread
                with self._deliver_lock:
                    for pending, _, _ in pieces:
                        if not pending.failed and not pending.future.done():
                            pending.failed = True
                            pending.future.set_exception(error)
                raise
            with self._deliver_lock:
                self.stats.batches += 1
                self.stats.items += items
                self.stats.sizes[items] += 1
                for (pending, start, stop), response in zip(pieces, responses):
                    self._deliver(pending, start, stop, response)
        finally:
            self._slots.release()

    def _deliver(self, pending: _Pending, start: int, stop: int, response: InferenceResponse) -> None:
        """Record one piece; resolve the request when all its items are back (or at its first error).

        Called with ``_deliver_lock`` held: pieces of one request may finish on different batch threads.
        """
        if pending.failed:
            return
        if not response.ok:
            pending.failed = True
            pending.future.set_result(InferenceResponse(pending.key, error=response.error))
            log.warning("batch.failed", model=self.name, reason=response.error)
            return
        pending.pieces[start] = response.outputs or ()
        pending.received += stop - start
        if pending.received == pending.count:
            ordered = [pending.pieces[s] for s in sorted(pending.pieces)]
            outputs = ordered[0] if len(ordered) == 1 else tuple(torch.cat(parts) for parts in zip(*ordered))
            pending.future.set_result(InferenceResponse(pending.key, outputs=outputs))
