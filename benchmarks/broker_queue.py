"""The job queue: ZeroMQ broker round trip, and a 100 MB study moved as frames vs a raw socket copy.

Run: ``python -m benchmarks.broker_queue [--quick]``. The product's path: a
:class:`engine.broker.broker.Broker` with an in-memory job source and a
:class:`engine.broker.worker_link.WorkerLink` whose handler returns at once,
over TCP on loopback. Figures: the median round trip of a small job (lease ->
frames -> DONE -> filed), and MB/s for a study of 200 frames of 0.5 MB (the
frames go out, a small result comes back). Baseline in the same run: the same
bytes through a plain TCP socket pair on loopback (``sendall``/``recv_into``).
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from collections import deque
from typing import Any, Collection

from benchmarks.common import parser, print_table, write_result
from engine.broker.broker import Broker, OutgoingJob, WorkerInfo
from engine.broker.worker_link import JobDone, JobRequest, WorkerLink


class MemorySource:
    """A JobSource serving prepared jobs and timing each from lease to DONE."""

    def __init__(self) -> None:
        self._queue: deque[OutgoingJob] = deque()
        self._leased: dict[str, float] = {}
        self.round_trips: dict[str, float] = {}
        self._done = threading.Condition()

    def add(self, job_id: str, frames: list[bytes]) -> None:
        with self._done:
            self._queue.append(OutgoingJob(job_id, 1, {"model": "bench"}, frames))

    def next_job(self, worker: WorkerInfo) -> OutgoingJob | None:
        with self._done:
            if not self._queue:
                return None
            job = self._queue.popleft()
            self._leased[job.job_id] = time.perf_counter()
            return job

    def job_done(self, job_id: str, attempt: int, result: dict, artifacts: list[tuple[dict, memoryview]]) -> None:
        with self._done:
            self.round_trips[job_id] = time.perf_counter() - self._leased.pop(job_id)
            self._done.notify_all()

    def job_failed(self, job_id: str, attempt: int, reason: str, retryable: bool) -> None:
        raise RuntimeError(f"job {job_id} failed: {reason}")

    def lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        raise RuntimeError(f"job {job_id} lost its lease: {reason}")

    def reap(self, held: Collection[str]) -> None:
        """Leases live in this source's memory only: nothing to renew or take back."""

    def wait(self, count: int, timeout: float = 120.0) -> None:
        with self._done:
            if not self._done.wait_for(lambda: len(self.round_trips) >= count, timeout):
                raise TimeoutError(f"only {len(self.round_trips)} of {count} jobs came back")


def broker_figures(small_jobs: int, frames: list[bytes], big_jobs: int) -> dict[str, Any]:
    """Round trips of small jobs, then MB/s of big ones, through a real broker and worker link."""
    source = MemorySource()
    broker = Broker("tcp://127.0.0.1:*", source, heartbeat_interval=1.0, liveness=5)
    broker.start()
    stop = threading.Event()

    def handler(request: JobRequest) -> JobDone:
        return JobDone({"frames": len(request.payload)}, [])

    link = WorkerLink(broker.bound_address, "bench", handler, capacity=1, heartbeat_interval=1.0, liveness=5)
    thread = threading.Thread(target=link.run, args=(stop,), daemon=True)
    thread.start()
    try:
        for index in range(small_jobs):
            source.add(f"small-{index}", [b"x" * 1024])
            broker.notify()
            source.wait(index + 1)
        start = time.perf_counter()
        for index in range(big_jobs):
            source.add(f"big-{index}", frames)
        broker.notify()
        source.wait(small_jobs + big_jobs)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        thread.join(10)
        broker.stop()
    small = [v for k, v in source.round_trips.items() if k.startswith("small-")][1:]  # first one warms up
    megabytes = big_jobs * sum(len(f) for f in frames) / 1e6
    return {"round_trip_median_s": statistics.median(small), "round_trip_p99_s": sorted(small)[int(len(small) * .99)],
            "study_mb_s": megabytes / elapsed}


def raw_socket_mb_s(frames: list[bytes], repeats: int) -> float:
    """MB/s of the same bytes through a plain TCP socket pair on loopback."""
    server = socket.create_server(("127.0.0.1", 0))
    total = repeats * sum(len(f) for f in frames)

    def drain() -> None:
        connection, _ = server.accept()
        buffer = bytearray(1 << 20)
        received = 0
        with connection:
            while received < total:
                count = connection.recv_into(buffer)
                if not count:
                    break
                received += count
            connection.sendall(b"k")

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with socket.create_connection(server.getsockname()) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        for _ in range(repeats):
            for frame in frames:
                client.sendall(frame)
        client.recv(1)
        elapsed = time.perf_counter() - start
    reader.join(10)
    server.close()
    return total / 1e6 / elapsed


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    count, frame_bytes, small, big = (20, 64 * 1024, 20, 2) if args.quick else (200, 512 * 1024, 200, 5)
    frames = [os.urandom(frame_bytes) for _ in range(count)]
    broker = broker_figures(small, frames, big)
    raw = raw_socket_mb_s(frames, big)
    ratio = broker["study_mb_s"] / raw
    study_mb = count * frame_bytes / 1e6
    print(f"study: {count} frames of {frame_bytes // 1024} KiB = {study_mb:.0f} MB, {big} studies; "
          f"{small} small jobs for the round trip")
    print_table(["measure", "value"], [
        ["small job round trip, median (ms)", broker["round_trip_median_s"] * 1e3],
        ["small job round trip, p99 (ms)", broker["round_trip_p99_s"] * 1e3],
        ["study through the broker (MB/s)", broker["study_mb_s"]],
        ["raw TCP socket copy (MB/s)", raw],
        ["broker / raw socket", ratio]])
    write_result(args.out, "broker_queue", {"quick": args.quick, "frames": count, "frame_bytes": frame_bytes,
                                            **broker, "raw_socket_mb_s": raw, "ratio": ratio})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
