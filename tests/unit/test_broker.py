"""The broker over real ZeroMQ sockets: hand-driven DEALER peers, and real WorkerLinks end to end.

The job source is an in-memory fake (the only stand-in); the broker and the link are real.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Collection, Iterator

import pytest
import zmq

from engine.broker.broker import Broker, BrokerError, OutgoingJob, WorkerInfo
from engine.broker.protocol import Command, Message, decode, encode
from engine.broker.worker_link import JobDone, JobFailed, JobOutcome, JobRequest, WorkerLink
from engine.testing.waiting import wait_until

INTERVAL = 0.1
LIVENESS = 3
WAIT = 60.0  # a failing test's bound only: passing ones return as soon as the broker answers
"""Generous bound for anything that should happen within a few heartbeats."""


class FakeSource:
    """An in-memory JobSource: a queue of jobs, and lists of what the broker reported."""

    def __init__(self, models_of: dict[str, str] | None = None) -> None:
        self._cond = threading.Condition()
        self._queue: deque[OutgoingJob] = deque()
        self._models_of = models_of or {}
        self.claims: list[tuple[str, int, str]] = []
        self.done: list[tuple[str, int, dict, list[tuple[dict, bytes]]]] = []
        self.failed: list[tuple[str, int, str, bool]] = []
        self.lost: list[tuple[str, int, str]] = []
        self.reaped: list[set[str]] = []
        self.raise_on_done = False

    def add(self, job_id: str, payload: list[bytes] | None = None, attempt: int = 1, **job: Any) -> None:
        with self._cond:
            self._queue.append(OutgoingJob(job_id, attempt, dict(job), list(payload or [])))

    def next_job(self, worker: WorkerInfo) -> OutgoingJob | None:
        with self._cond:
            for job in self._queue:
                model = self._models_of.get(job.job_id)
                if model is None or model in worker.models:
                    self._queue.remove(job)
                    self.claims.append((job.job_id, job.attempt, worker.name))
                    self._cond.notify_all()
                    return job
            return None

    def job_done(self, job_id: str, attempt: int, result: dict, artifacts: list[tuple[dict, memoryview]]) -> None:
        with self._cond:
            self.done.append((job_id, attempt, result, [(meta, bytes(view)) for meta, view in artifacts]))
            self._cond.notify_all()
        if self.raise_on_done:
            raise RuntimeError("ledger is on fire")

    def job_failed(self, job_id: str, attempt: int, reason: str, retryable: bool) -> None:
        with self._cond:
            self.failed.append((job_id, attempt, reason, retryable))
            self._cond.notify_all()

    def lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        """Record it and queue the job again as the next attempt, as the ledger does."""
        with self._cond:
            self.lost.append((job_id, attempt, reason))
            self._queue.appendleft(OutgoingJob(job_id, attempt + 1, {}, []))
            self._cond.notify_all()

    def reap(self, held: Collection[str]) -> None:
        with self._cond:
            self.reaped.append(set(held))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), "timed out waiting for the broker"


class Peer:
    """A raw DEALER speaking the protocol by hand, to drive the broker step by step.

    While waiting for a message it heartbeats like a live worker, once registered and
    unless ``heartbeat`` is off (a worker that hangs).
    """

    def __init__(self, context: zmq.Context, address: str, heartbeat: bool = True) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.heartbeat = heartbeat
        self.registered = False

    def send(self, cmd: Command, payload: list[bytes] | None = None, **fields: Any) -> None:
        self.socket.send_multipart(encode(cmd, fields, payload or []), copy=False)

    def ready(self, name: str = "peer", capacity: int = 1, models: tuple[str, ...] = ()) -> None:
        self.send(Command.READY, worker=name, pid=1, capacity=capacity, models=list(models))
        self.registered = True

    def done(self, job_id: str, attempt: int, artifacts: dict[str, bytes] | None = None) -> None:
        artifacts = artifacts or {}
        metas = [{"name": name, "media_type": "application/octet-stream"} for name in artifacts]
        self.send(Command.DONE, list(artifacts.values()), job_id=job_id, attempt=attempt, result={"ok": True},
                  artifacts=metas)

    def next(self, timeout: float) -> Message | None:
        """The next message other than HEARTBEAT within ``timeout``, else None; heartbeats while waiting."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.heartbeat and self.registered:
                self.send(Command.HEARTBEAT)
            if self.socket.poll(int(min(left, INTERVAL) * 1000) + 1):
                message = decode(self.socket.recv_multipart(copy=False))
                if message.cmd is Command.DISCONNECT:
                    self.registered = False
                if message.cmd is not Command.HEARTBEAT:
                    return message
        return None

    def expect(self, cmd: Command, timeout: float = WAIT) -> Message:
        message = self.next(timeout)
        assert message is not None, f"no {cmd} within {timeout}s"
        assert message.cmd is cmd, f"expected {cmd}, got {message.cmd} {message.header}"
        return message


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    brokers: list[Broker] = []

    def make(source: FakeSource, address: str = "tcp://127.0.0.1:*") -> Broker:
        broker = Broker(address, source, heartbeat_interval=INTERVAL, liveness=LIVENESS)
        broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., Broker], source: FakeSource) -> Broker:
    return make_broker(source)


@pytest.fixture
def peer(context: zmq.Context, broker: Broker) -> Callable[..., Peer]:
    return lambda heartbeat=True: Peer(context, broker.bound_address, heartbeat)


@pytest.fixture
def start_link() -> Iterator[Callable[..., None]]:
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(address: str, handler: Callable[[JobRequest], JobOutcome], name: str = "w", capacity: int = 1) -> None:
        stop = threading.Event()
        link = WorkerLink(address, name, handler, capacity=capacity, heartbeat_interval=INTERVAL, liveness=LIVENESS,
                          reconnect_min=0.05, reconnect_max=0.2)
        thread = threading.Thread(target=link.run, args=(stop,), name=f"link-{name}", daemon=True)
        thread.start()
        running.append((stop, thread))

    yield start
    for stop, _ in running:
        stop.set()
    for _, thread in running:
        thread.join(WAIT)
        assert not thread.is_alive(), "WorkerLink.run did not return after stop"


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll ``predicate`` (for broker stats, which signal nothing) until true or fail."""
    wait_until(predicate, "the broker's stats to show it", timeout=timeout, interval=0.005)


def _digest(views: list[memoryview]) -> str:
    digest = hashlib.sha256()
    for view in views:
        digest.update(view)
    return digest.hexdigest()


# -- end to end with WorkerLink -------------------------------------------------------------


def test_job_flows_to_worker_and_artifacts_come_back_intact(broker: Broker, source: FakeSource, start_link) -> None:
    instances = [os.urandom(1_500_000), os.urandom(2_000_000), b"small"]
    artifact = os.urandom(3_000_000)

    def handler(request: JobRequest) -> JobOutcome:
        result = {"digest": _digest(request.payload), "frames": len(request.payload), "model": request.job["model"]}
        return JobDone(result, [("seg.dcm", "application/dicom", artifact), ("result.json", "application/json", b"{}")])

    start_link(broker.bound_address, handler)
    source.add("j1", instances, model="lung")
    broker.notify()
    source.wait(lambda: len(source.done) == 1)
    job_id, attempt, result, artifacts = source.done[0]
    assert (job_id, attempt) == ("j1", 1)
    assert result == {"digest": _digest([memoryview(i) for i in instances]), "frames": 3, "model": "lung"}
    assert artifacts == [({"name": "seg.dcm", "media_type": "application/dicom"}, artifact),
                         ({"name": "result.json", "media_type": "application/json"}, b"{}")]
    assert source.failed == [] and source.lost == []


def test_two_workers_share_jobs(broker: Broker, source: FakeSource, start_link) -> None:
    both_started = threading.Barrier(2, timeout=WAIT)

    def handler(request: JobRequest) -> JobOutcome:
        if request.job_id in ("j1", "j2"):
            both_started.wait()  # only passes if the first two jobs run at the same time on different workers
        return JobDone({"job": request.job_id})

    for n in range(6):
        source.add(f"j{n + 1}")
    start_link(broker.bound_address, handler, name="a")
    start_link(broker.bound_address, handler, name="b")
    source.wait(lambda: len(source.done) == 6)
    assert sorted(done[0] for done in source.done) == [f"j{n + 1}" for n in range(6)]
    assert {claim[2] for claim in source.claims} == {"a", "b"}
    assert source.failed == []


def test_handler_exception_reaches_source_as_retryable_failure(broker: Broker, source: FakeSource, start_link) -> None:
    def handler(request: JobRequest) -> JobOutcome:
        raise ValueError(f"cannot decode {request.job_id}")

    start_link(broker.bound_address, handler)
    source.add("j1")
    broker.notify()
    source.wait(lambda: len(source.failed) == 1)
    assert source.failed == [("j1", 1, "ValueError: cannot decode j1", True)]
    assert source.done == []


def test_handler_failure_outcome_reaches_source(broker: Broker, source: FakeSource, start_link) -> None:
    start_link(broker.bound_address, lambda request: JobFailed("unknown model", retryable=False))
    source.add("j1")
    broker.notify()
    source.wait(lambda: len(source.failed) == 1)
    assert source.failed == [("j1", 1, "unknown model", False)]


def test_worker_gets_jobs_again_after_broker_restart(make_broker, start_link) -> None:
    first_source = FakeSource()
    first = make_broker(first_source)
    address = first.bound_address
    start_link(address, lambda request: JobDone({"job": request.job_id}))
    first_source.add("before")
    first.notify()
    first_source.wait(lambda: len(first_source.done) == 1)
    first.stop()

    second_source = FakeSource()
    second = make_broker(second_source, address)
    second_source.add("after")
    second.notify()
    second_source.wait(lambda: len(second_source.done) == 1)
    assert second_source.done[0][:2] == ("after", 1)
    eventually(lambda: second.stats().results == 1)


# -- hand-driven peers ----------------------------------------------------------------------


def test_workers_are_listed_with_host_models_and_jobs_in_flight(broker: Broker, source: FakeSource, peer) -> None:
    before = time.time()
    worker = peer()
    worker.send(Command.READY, worker="ct-host:7:0", pid=7, capacity=2, models=["lung"], host="ct-host")
    old = peer()
    old.ready(name="old-worker")  # a worker of a version that names no host
    source.add("j1")
    broker.notify()
    worker.expect(Command.JOB)
    eventually(lambda: [w.in_flight for w in broker.workers()] == [1, 0])
    listed, unnamed = broker.workers()
    assert (listed.name, listed.host, listed.pid, listed.models, listed.free_slots) == \
        ("ct-host:7:0", "ct-host", 7, ("lung",), 1)
    assert (unnamed.name, unnamed.host) == ("old-worker", "") and listed.last_seen >= before


def test_credit_holds_back_the_second_job_until_the_first_is_done(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready(capacity=1)
    source.add("j1")
    source.add("j2")
    broker.notify()
    first = worker.expect(Command.JOB)
    assert first.header["job_id"] == "j1"
    assert worker.next(timeout=5 * INTERVAL) is None  # several dispatch chances, no credit
    stats = broker.stats()
    assert (stats.workers, stats.jobs_in_flight, stats.credits) == (1, 1, 0)
    worker.done("j1", 1)
    assert worker.expect(Command.JOB).header["job_id"] == "j2"
    source.wait(lambda: len(source.done) == 1)


def test_capacity_allows_that_many_jobs_at_once(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    for n in range(3):
        source.add(f"j{n}")
    worker.ready(capacity=2)
    assert {worker.expect(Command.JOB).header["job_id"] for _ in range(2)} == {"j0", "j1"}
    assert worker.next(timeout=3 * INTERVAL) is None


def test_jobs_spread_over_workers_with_free_credit(broker: Broker, source: FakeSource, peer) -> None:
    first, second = peer(), peer()
    first.ready("first", capacity=2)
    second.ready("second", capacity=2)
    eventually(lambda: broker.stats().workers == 2)
    source.add("j1")
    source.add("j2")
    broker.notify()
    assert first.expect(Command.JOB).header["job_id"] != second.expect(Command.JOB).header["job_id"]
    assert first.next(timeout=2 * INTERVAL) is None and second.next(timeout=2 * INTERVAL) is None


def test_jobs_go_to_a_worker_that_runs_the_model(make_broker, context: zmq.Context) -> None:
    source = FakeSource(models_of={"ct-job": "liver"})
    broker = make_broker(source)
    lung, liver = Peer(context, broker.bound_address), Peer(context, broker.bound_address)
    lung.ready("lung-worker", models=("lung",))
    liver.ready("liver-worker", models=("liver",))
    eventually(lambda: broker.stats().workers == 2)
    source.add("ct-job")
    broker.notify()
    assert liver.expect(Command.JOB).header["job_id"] == "ct-job"
    assert lung.next(timeout=3 * INTERVAL) is None


def test_silent_worker_loses_its_lease_and_the_job_goes_to_another(broker: Broker, source: FakeSource, peer) -> None:
    silent, healthy = peer(heartbeat=False), peer()
    silent.ready("silent")
    source.add("j1")
    broker.notify()
    silent.expect(Command.JOB)
    healthy.ready("healthy")
    retry = healthy.expect(Command.JOB)
    assert (retry.header["job_id"], retry.header["attempt"]) == ("j1", 2)
    assert source.lost == [("j1", 1, "heartbeat timeout")]
    healthy.done("j1", 2)
    source.wait(lambda: len(source.done) == 1)
    assert source.done[0][:2] == ("j1", 2)


def test_stale_result_after_lease_loss_is_ignored(broker: Broker, source: FakeSource, peer) -> None:
    slow = peer(heartbeat=False)
    slow.ready("slow")
    source.add("j1")
    broker.notify()
    slow.expect(Command.JOB)
    source.wait(lambda: len(source.lost) == 1)
    slow.expect(Command.DISCONNECT)  # sent when its lease expired
    slow.done("j1", 1, {"seg.dcm": b"late"})  # a forgotten peer's result: dropped, told to READY again
    slow.expect(Command.DISCONNECT)
    back = peer()  # the worker's fresh connection, as WorkerLink makes after DISCONNECT
    back.ready("slow")
    retry = back.expect(Command.JOB)
    assert retry.header["attempt"] == 2
    back.done("j1", 1)  # the old attempt again, now from a registered worker: still not its lease
    back.done("j1", 2, {"seg.dcm": b"fresh"})
    source.wait(lambda: len(source.done) == 1)
    assert back.next(timeout=3 * INTERVAL) is None
    assert [(d[0], d[1], d[3]) for d in source.done] == [("j1", 2, [({"name": "seg.dcm",
                                                          "media_type": "application/octet-stream"}, b"fresh")])]


def test_disconnect_gives_leases_back_at_once(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready()
    source.add("j1")
    broker.notify()
    worker.expect(Command.JOB)
    worker.send(Command.DISCONNECT)
    source.wait(lambda: len(source.lost) == 1)
    assert source.lost == [("j1", 1, "worker disconnected")]
    eventually(lambda: broker.stats().workers == 0)


def test_vanished_worker_loses_its_lease(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready()
    source.add("j1")
    broker.notify()
    worker.expect(Command.JOB)
    worker.socket.close(linger=0)
    source.wait(lambda: len(source.lost) == 1)
    assert source.lost[0][:2] == ("j1", 1)


def test_broker_heartbeats_registered_workers(broker: Broker, peer) -> None:
    worker = peer()
    worker.ready()
    assert worker.socket.poll(int(WAIT * 1000))
    assert decode(worker.socket.recv_multipart(copy=False)).cmd is Command.HEARTBEAT


def test_heartbeats_keep_a_busy_worker_alive(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready()
    source.add("j1")
    broker.notify()
    worker.expect(Command.JOB)
    deadline = time.monotonic() + 2 * LIVENESS * INTERVAL
    while time.monotonic() < deadline:
        worker.send(Command.HEARTBEAT)
        time.sleep(INTERVAL / 2)
    assert source.lost == []
    assert broker.stats().jobs_in_flight == 1


def test_unknown_peer_is_told_to_ready_again(broker: Broker, peer) -> None:
    stranger = peer()
    stranger.send(Command.HEARTBEAT)
    stranger.expect(Command.DISCONNECT)
    assert broker.stats().workers == 0


def test_re_ready_returns_the_old_leases(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready(capacity=1)
    source.add("j1")
    broker.notify()
    worker.expect(Command.JOB)
    worker.ready(capacity=1)
    source.wait(lambda: len(source.lost) == 1)
    assert source.lost == [("j1", 1, "worker re-registered")]
    assert worker.expect(Command.JOB).header["attempt"] == 2


def test_malformed_messages_do_not_kill_the_broker(broker: Broker, source: FakeSource, peer) -> None:
    rogue = peer()
    for frames in ([b"\xc1\xc1"], [b""], [b"\x93\x01\x02\x03"], [b"\x82\xa1v\x02\xa3cmd\xa5READY"],
                   [encode(Command.HEARTBEAT)[0], b"unexpected payload"]):
        rogue.socket.send_multipart(frames)
    rogue.send(Command.JOB, job_id="x", attempt=1, job={})  # valid frame, wrong direction, unknown peer
    rogue.expect(Command.DISCONNECT)
    rogue.ready()
    rogue.send(Command.DONE, job_id="never-sent", attempt=1, result={}, artifacts=[])
    source.add("j1")
    broker.notify()
    assert rogue.expect(Command.JOB).header["job_id"] == "j1"
    assert broker.stats().running
    assert source.done == []


def test_source_exceptions_do_not_kill_the_broker(broker: Broker, source: FakeSource, peer) -> None:
    source.raise_on_done = True
    worker = peer()
    worker.ready()
    source.add("j1")
    source.add("j2")
    broker.notify()
    worker.expect(Command.JOB)
    worker.done("j1", 1)
    assert worker.expect(Command.JOB).header["job_id"] == "j2"
    assert broker.stats().running


def test_unencodable_job_fails_without_retry(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready()
    source.add("bad", when=object())
    source.add("good")
    broker.notify()
    assert worker.expect(Command.JOB).header["job_id"] == "good"
    assert len(source.failed) == 1
    job_id, attempt, reason, retryable = source.failed[0]
    assert (job_id, attempt, retryable) == ("bad", 1, False)
    assert reason.startswith("ProtocolError:")


def test_notify_is_safe_from_many_threads(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready(capacity=8)
    eventually(lambda: broker.stats().workers == 1)

    def produce(n: int) -> None:
        source.add(f"j{n}")
        for _ in range(50):
            broker.notify()

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {worker.expect(Command.JOB).header["job_id"] for _ in range(8)} == {f"j{n}" for n in range(8)}


def test_stats_count_jobs_and_results(broker: Broker, source: FakeSource, peer) -> None:
    worker = peer()
    worker.ready(capacity=3)
    source.add("j1")
    broker.notify()
    worker.expect(Command.JOB)
    eventually(lambda: broker.stats().jobs_sent == 1)
    stats = broker.stats()
    assert (stats.workers, stats.jobs_in_flight, stats.credits, stats.results) == (1, 1, 2, 0)
    worker.done("j1", 1)
    eventually(lambda: broker.stats().results == 1)
    assert (broker.stats().jobs_in_flight, broker.stats().credits) == (0, 3)


def test_binding_a_taken_address_names_it(broker: Broker, source: FakeSource) -> None:
    second = Broker(broker.bound_address, source)
    with pytest.raises(BrokerError, match=broker.bound_address):
        second.start()
    second.stop()


def test_bound_address_resolves_the_wildcard_port(broker: Broker) -> None:
    host, _, port = broker.bound_address.rpartition(":")
    assert host == "tcp://127.0.0.1" and int(port) > 0


def test_stop_ends_the_thread(source: FakeSource) -> None:
    broker = Broker("tcp://127.0.0.1:*", source, heartbeat_interval=INTERVAL)
    broker.start()
    assert broker.stats().running
    broker.stop()
    assert not broker.stats().running
    broker.notify()  # harmless after stop
    with pytest.raises(BrokerError):
        broker.start()


def test_reap_is_told_the_jobs_connected_workers_hold(source: FakeSource, peer: Callable[..., Peer]) -> None:
    worker = peer()
    worker.ready("w1")
    source.add("j1")
    job = worker.expect(Command.JOB)
    source.wait(lambda: any("j1" in held for held in source.reaped))  # renewed while the worker holds it
    worker.done(job.header["job_id"], job.header["attempt"])
    source.wait(lambda: bool(source.done))
    count = len(source.reaped)
    source.wait(lambda: len(source.reaped) > count and "j1" not in source.reaped[-1])  # settled: not held
