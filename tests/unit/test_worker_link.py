"""WorkerLink against a hand-driven ROUTER: what it sends, when, and how it recovers."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, Iterator

import pytest
import zmq

from engine.broker.protocol import Command, Message, decode, encode
from engine.broker.worker_link import Backoff, JobDone, JobFailed, JobOutcome, JobRequest, WorkerLink

INTERVAL = 0.05
WAIT = 5.0
"""Generous bound for anything that should happen within a few heartbeats."""


class RawBroker:
    """A ROUTER speaking the protocol by hand; while receiving it answers heartbeats if ``alive``."""

    def __init__(self, context: zmq.Context) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.alive = True

    def send(self, identity: bytes, cmd: Command, payload: list[bytes] | None = None, **fields: Any) -> None:
        self.socket.send_multipart([identity, *encode(cmd, fields, payload or [])], copy=False)

    def job(self, identity: bytes, job_id: str, payload: list[bytes] | None = None, attempt: int = 1) -> None:
        self.send(identity, Command.JOB, payload, job_id=job_id, attempt=attempt, job={"model": "m"})

    def recv(self, timeout: float = WAIT) -> tuple[bytes, Message]:
        """The next message, heartbeats included."""
        assert self.socket.poll(int(timeout * 1000)), f"nothing from the worker within {timeout}s"
        identity, *frames = self.socket.recv_multipart(copy=False)
        message = decode(frames)
        if message.cmd is Command.HEARTBEAT and self.alive:
            self.send(identity.bytes, Command.HEARTBEAT)
        return identity.bytes, message

    def expect(self, cmd: Command, timeout: float = WAIT) -> tuple[bytes, Message]:
        """The next message other than HEARTBEAT, which must be ``cmd``."""
        deadline = time.monotonic() + timeout
        while True:
            identity, message = self.recv(max(deadline - time.monotonic(), 0.001))
            if message.cmd is not Command.HEARTBEAT:
                assert message.cmd is cmd, f"expected {cmd}, got {message.cmd} {message.header}"
                return identity, message


@pytest.fixture
def broker(context: zmq.Context) -> RawBroker:
    return RawBroker(context)


@pytest.fixture
def start_link(broker: RawBroker) -> Iterator[Callable[..., tuple[threading.Event, threading.Thread]]]:
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start(handler: Callable[[JobRequest], JobOutcome], **options: Any) -> tuple[threading.Event, threading.Thread]:
        settings: dict[str, Any] = {"heartbeat_interval": INTERVAL, "liveness": 40, "reconnect_min": 0.02,
                                    "reconnect_max": 0.1, **options}
        link = WorkerLink(broker.address, "host:1:0", handler, **settings)
        stop = threading.Event()
        thread = threading.Thread(target=link.run, args=(stop,), daemon=True)
        thread.start()
        running.append((stop, thread))
        return stop, thread

    yield start
    for stop, thread in running:
        stop.set()
        thread.join(WAIT)
        assert not thread.is_alive(), "WorkerLink.run did not return after stop"


def _done(request: JobRequest) -> JobOutcome:
    echo = ("echo.bin", "application/octet-stream", bytes(request.payload[0]))
    return JobDone({"frames": len(request.payload)}, [echo])


def test_ready_announces_name_pid_capacity_models_and_host(broker: RawBroker, start_link) -> None:
    start_link(_done, capacity=2, models=["lung", "liver"])
    _, ready = broker.expect(Command.READY)
    assert ready.header == {"v": 1, "cmd": "READY", "worker": "host:1:0", "pid": os.getpid(), "capacity": 2,
                            "models": ["lung", "liver"], "host": socket.gethostname()}


def test_job_runs_and_done_carries_the_artifacts(broker: RawBroker, start_link) -> None:
    start_link(_done)
    identity, _ = broker.expect(Command.READY)
    instance = os.urandom(2_000_000)
    broker.job(identity, "j1", [instance, b"second"], attempt=3)
    _, done = broker.expect(Command.DONE)
    assert (done.header["job_id"], done.header["attempt"]) == ("j1", 3)
    assert done.header["result"] == {"frames": 2}
    assert done.header["artifacts"] == [{"name": "echo.bin", "media_type": "application/octet-stream"}]
    assert done.payload == [instance]


def test_heartbeats_continue_while_a_job_computes(broker: RawBroker, start_link) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(request: JobRequest) -> JobOutcome:
        started.set()
        assert release.wait(WAIT)
        return JobDone({})

    start_link(slow, liveness=3)
    identity, _ = broker.expect(Command.READY)
    broker.job(identity, "j1")
    assert started.wait(WAIT)
    heartbeats = 0
    while heartbeats < 8:  # several liveness periods of the link
        sender, message = broker.recv()
        assert (sender, message.cmd) == (identity, Command.HEARTBEAT)
        heartbeats += 1
    release.set()
    assert broker.expect(Command.DONE)[0] == identity


def test_jobs_run_concurrently_up_to_capacity(broker: RawBroker, start_link) -> None:
    together = threading.Barrier(2, timeout=WAIT)

    def handler(request: JobRequest) -> JobOutcome:
        together.wait()  # raises BrokenBarrierError (-> FAIL) unless both jobs run at once
        return JobDone({"job": request.job_id})

    start_link(handler, capacity=2)
    identity, _ = broker.expect(Command.READY)
    broker.job(identity, "j1")
    broker.job(identity, "j2")
    finished = {broker.expect(Command.DONE)[1].header["job_id"] for _ in range(2)}
    assert finished == {"j1", "j2"}


def test_handler_exception_is_a_retryable_fail_naming_it(broker: RawBroker, start_link) -> None:
    def broken(request: JobRequest) -> JobOutcome:
        raise RuntimeError("CUDA out of memory")

    start_link(broken)
    identity, _ = broker.expect(Command.READY)
    broker.job(identity, "j1", attempt=2)
    _, fail = broker.expect(Command.FAIL)
    assert fail.header == {"v": 1, "cmd": "FAIL", "job_id": "j1", "attempt": 2,
                           "reason": "RuntimeError: CUDA out of memory", "retryable": True}


def test_handler_failure_outcome_is_sent_as_given(broker: RawBroker, start_link) -> None:
    start_link(lambda request: JobFailed("unknown model", retryable=False))
    identity, _ = broker.expect(Command.READY)
    broker.job(identity, "j1")
    _, fail = broker.expect(Command.FAIL)
    assert (fail.header["reason"], fail.header["retryable"]) == ("unknown model", False)


@pytest.mark.parametrize(
    ("outcome", "reason_start"),
    [
        ({"not": "an outcome"}, "TypeError: job handler returned dict"),
        (JobDone({"when": object()}), "ProtocolError: result cannot be sent"),
        (JobDone({}, [("a.txt", "text/plain", "not bytes")]), "ProtocolError: result cannot be sent"),
    ],
)
def test_unusable_outcome_is_a_fail_without_retry(broker: RawBroker, start_link, outcome: Any,
                                                  reason_start: str) -> None:
    start_link(lambda request: outcome)
    identity, _ = broker.expect(Command.READY)
    broker.job(identity, "j1")
    _, fail = broker.expect(Command.FAIL)
    assert fail.header["reason"].startswith(reason_start)
    assert fail.header["retryable"] is False


def test_disconnect_from_the_broker_brings_a_fresh_ready(broker: RawBroker, start_link) -> None:
    start_link(_done, capacity=3)
    first, _ = broker.expect(Command.READY)
    broker.send(first, Command.DISCONNECT)
    second, ready = broker.expect(Command.READY)
    assert second != first
    assert ready.header["capacity"] == 3


def test_silent_broker_makes_the_link_reconnect(broker: RawBroker, start_link) -> None:
    broker.alive = False
    start_link(_done, liveness=2)
    identities = [broker.expect(Command.READY)[0] for _ in range(3)]
    assert len(set(identities)) == 3  # a fresh socket each time


def test_result_computed_across_a_reconnect_is_still_sent(broker: RawBroker, start_link) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(request: JobRequest) -> JobOutcome:
        started.set()
        assert release.wait(WAIT)
        return JobDone({"job": request.job_id})

    start_link(slow, capacity=2, liveness=3)
    first, ready = broker.expect(Command.READY)
    assert ready.header["capacity"] == 2
    broker.job(first, "j1")
    assert started.wait(WAIT)
    broker.alive = False  # the broker goes quiet: the link gives up on this connection
    second, ready = broker.expect(Command.READY)
    assert second != first
    assert ready.header["capacity"] == 1  # one slot is still computing j1
    broker.alive = True
    release.set()
    sender, done = broker.expect(Command.DONE)
    assert (sender, done.header["job_id"]) == (second, "j1")


def test_stop_sends_disconnect_and_returns(broker: RawBroker, start_link) -> None:
    stop, thread = start_link(_done)
    identity, _ = broker.expect(Command.READY)
    stop.set()
    assert broker.expect(Command.DISCONNECT)[0] == identity
    thread.join(WAIT)
    assert not thread.is_alive()


def test_run_twice_is_refused(broker: RawBroker) -> None:
    link = WorkerLink(broker.address, "w", _done, heartbeat_interval=INTERVAL)
    stop = threading.Event()
    stop.set()
    link.run(stop)
    with pytest.raises(RuntimeError, match="runs once"):
        link.run(stop)


def test_stop_does_not_wait_for_a_running_job(broker: RawBroker, start_link) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(request: JobRequest) -> JobOutcome:
        started.set()
        release.wait(3 * WAIT)  # run() must return long before this
        return JobDone({})

    stop, thread = start_link(stuck)
    identity, _ = broker.expect(Command.READY)
    broker.job(identity, "j1")
    assert started.wait(WAIT)
    stop.set()
    broker.expect(Command.DISCONNECT)
    thread.join(WAIT)
    assert not thread.is_alive()
    release.set()


def test_backoff_doubles_to_the_maximum_and_resets() -> None:
    backoff = Backoff(0.25, 1.5)
    assert [backoff.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    backoff.reset()
    assert backoff.next() == 0.25


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkerLink("tcp://127.0.0.1:1", "w", _done, capacity=0)
    with pytest.raises(ValueError):
        WorkerLink("tcp://127.0.0.1:1", "w", _done, reconnect_min=2.0, reconnect_max=1.0)
