"""The worker's side of the broker protocol: a DEALER socket, heartbeats, and compute threads.

:meth:`WorkerLink.run` owns the socket on the calling thread and does all network
I/O there; jobs run on ``capacity`` compute threads. A finished job comes back
through a queue plus a socketpair in the same poller, so its result is sent at
once, and heartbeats keep flowing while a long inference runs (the lease stays
alive). If the broker falls silent the link reconnects with exponential backoff
and sends READY again for the slots not busy; results of jobs that ran across a
reconnect are still sent, and the broker drops those whose lease it no longer holds.
"""

from __future__ import annotations

import collections
import os
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import zmq

from engine.broker.broker import Waker
from engine.broker.protocol import Command, Message, ProtocolError, decode, encode
from engine.broker.security import CurveClient, CurveError, is_loopback, secure_client
from engine.logs import get_logger

log = get_logger(__name__)

_RECV_BATCH = 64
_STOP_CHECK_S = 0.1
"""Longest poll, so ``stop`` is noticed promptly (results and messages wake the poll at once)."""
_DISCONNECT_LINGER_MS = 500
"""How long a closing link keeps trying to deliver its DISCONNECT."""


@dataclass(frozen=True)
class JobRequest:
    """A job as the handler sees it: header fields and one buffer per instance file."""

    job_id: str
    attempt: int
    job: dict[str, Any]
    payload: list[memoryview]


@dataclass(frozen=True)
class JobDone:
    """A finished job: the result map and artifacts as ``(name, media_type, data)``."""

    result: dict[str, Any]
    artifacts: list[tuple[str, str, bytes | memoryview]] = field(default_factory=list)


@dataclass(frozen=True)
class JobFailed:
    """A job that could not be done; ``retryable`` says whether another attempt may succeed."""

    reason: str
    retryable: bool = True


JobOutcome = Union[JobDone, JobFailed]
_Finished = tuple[str, int, JobOutcome]


class Backoff:
    """Reconnect delays: ``minimum`` doubling up to ``maximum``, back to ``minimum`` on reset."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self._delay = minimum

    def next(self) -> float:
        """The delay before this attempt; the following one waits twice as long (capped)."""
        delay = self._delay
        self._delay = min(delay * 2, self._maximum)
        return delay

    def reset(self) -> None:
        """The broker answered: the next outage starts from the minimum again."""
        self._delay = self._minimum


class WorkerLink:
    """Connects one worker process to the broker and runs its jobs through ``handler``."""

    def __init__(self, broker: str, name: str, handler: Callable[[JobRequest], JobOutcome], *, capacity: int = 1,
                 models: Sequence[str] = (), heartbeat_interval: float = 1.0, liveness: int = 3,
                 reconnect_min: float = 0.25, reconnect_max: float = 8.0,
                 context: zmq.Context | None = None, curve: CurveClient | None = None) -> None:
        if capacity < 1 or liveness < 1:
            raise ValueError("capacity and liveness must be >= 1")
        if heartbeat_interval <= 0 or not 0 < reconnect_min <= reconnect_max:
            raise ValueError("heartbeat_interval must be > 0 and 0 < reconnect_min <= reconnect_max")
        if curve is None and not is_loopback(broker):
            raise CurveError(f"broker {broker} is not on loopback: configure CurveZMQ "
                             "(worker.curve_secret_key and worker.curve_server_key; see `scanstream keys`)")
        self._curve = curve
        self._broker = broker
        self._name = name
        self._handler = handler
        self._capacity = capacity
        self._models = list(models)
        self._interval = heartbeat_interval
        self._timeout = heartbeat_interval * liveness
        self._backoff = Backoff(reconnect_min, reconnect_max)
        self._context = context
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._waker = Waker()
        self._finished: queue.SimpleQueue[_Finished] = queue.SimpleQueue()
        self._outbox: collections.deque[_Finished] = collections.deque()
        self._busy = 0
        self._ran = False
        self._next_beat = self._broker_expires = self._reconnect_at = 0.0

    def run(self, stop: threading.Event) -> None:
        """Serve jobs until ``stop`` is set, then send DISCONNECT and close (call once)."""
        if self._ran:
            raise RuntimeError("a WorkerLink runs once; create a new one")
        self._ran = True
        context = self._context or zmq.Context()
        pool = ThreadPoolExecutor(self._capacity, thread_name_prefix="scanstream-compute")
        self._poller.register(self._waker.fileno(), zmq.POLLIN)
        try:
            self._connect(context)
            while not stop.is_set():
                self._step(context, pool)
            self._leave()
        finally:
            self._close(linger=0)
            pool.shutdown(wait=False, cancel_futures=True)
            self._waker.close()
            if self._context is None:
                context.term()
        log.info("worker.link_closed", worker=self._name, jobs_abandoned=self._busy)

    # -- network thread ------------------------------------------------------------------

    def _step(self, context: zmq.Context, pool: ThreadPoolExecutor) -> None:
        """One poll: take finished jobs, read the broker, send results, keep the link alive."""
        events = dict(self._poller.poll(self._poll_timeout_ms()))
        if self._waker.fileno() in events:
            self._waker.drain()
            self._collect()
        if self._socket is not None and self._socket in events:
            self._receive(context, pool)
        self._flush()
        self._keep_alive(context, time.monotonic())

    def _poll_timeout_ms(self) -> int:
        deadline = min(self._next_beat, self._broker_expires) if self._socket is not None else self._reconnect_at
        wait = min(deadline - time.monotonic(), _STOP_CHECK_S)
        return max(0, int(wait * 1000) + 1)

    def _connect(self, context: zmq.Context) -> None:
        """Open a fresh DEALER socket and offer the free slots with READY."""
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            secure_client(sock, self._curve)
        sock.connect(self._broker)
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)
        free = max(self._capacity - self._busy, 0)
        self._send(encode(Command.READY, {"worker": self._name, "pid": os.getpid(), "capacity": free,
                                          "models": self._models, "host": socket.gethostname()}))
        now = time.monotonic()
        self._broker_expires = now + self._timeout
        self._next_beat = now + self._interval
        log.info("worker.connecting", worker=self._name, broker=self._broker, capacity=free)

    def _close(self, linger: int) -> None:
        if self._socket is None:
            return
        self._poller.unregister(self._socket)
        self._socket.close(linger=linger)
        self._socket = None

    def _leave(self) -> None:
        """Send results already finished, tell the broker we are going (it requeues the rest), close."""
        self._collect()
        self._flush()
        if self._socket is not None:
            self._send(encode(Command.DISCONNECT))
            self._close(linger=_DISCONNECT_LINGER_MS)

    def _keep_alive(self, context: zmq.Context, now: float) -> None:
        """Heartbeat the broker; reconnect with backoff when it has been silent too long."""
        if self._socket is None:
            if now >= self._reconnect_at:
                self._connect(context)
            return
        if now >= self._broker_expires:
            delay = self._backoff.next()
            log.warning("worker.broker_silent", worker=self._name, broker=self._broker, retry_in_s=delay)
            self._close(linger=0)
            self._reconnect_at = now + delay
        elif now >= self._next_beat:
            self._send(encode(Command.HEARTBEAT))
            self._next_beat = now + self._interval

    def _receive(self, context: zmq.Context, pool: ThreadPoolExecutor) -> None:
        """Handle the messages waiting from the broker (up to a batch)."""
        for _ in range(_RECV_BATCH):
            assert self._socket is not None
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = decode(frames)
            except ProtocolError as exc:
                log.warning("worker.bad_message", worker=self._name, error=str(exc))
                continue
            self._broker_expires = time.monotonic() + self._timeout
            self._backoff.reset()
            if message.cmd is Command.JOB:
                self._start(message, pool)
            elif message.cmd is Command.DISCONNECT:
                log.info("worker.reregistering", worker=self._name)
                self._close(linger=0)
                self._connect(context)
                return
            elif message.cmd is not Command.HEARTBEAT:
                log.warning("worker.unexpected_command", worker=self._name, cmd=str(message.cmd))

    def _start(self, message: Message, pool: ThreadPoolExecutor) -> None:
        """Hand a JOB to the compute threads."""
        header = message.header
        request = JobRequest(header["job_id"], header["attempt"], header["job"], message.payload)
        self._busy += 1
        pool.submit(self._compute, request)
        log.info("worker.job_received", worker=self._name, job=request.job_id, attempt=request.attempt,
                 frames=len(request.payload))

    def _collect(self) -> None:
        """Move finished jobs from the compute threads' queue to the outbox."""
        while True:
            try:
                self._outbox.append(self._finished.get_nowait())
            except queue.Empty:
                return

    def _flush(self) -> None:
        """Send queued results while connected (kept for the next connection otherwise)."""
        while self._socket is not None and self._outbox:
            job_id, attempt, outcome = self._outbox[0]
            frames = _encode_outcome(job_id, attempt, outcome)
            try:
                self._socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # send queue full: retried on the next step
            self._outbox.popleft()
            self._busy -= 1
            log.info("worker.result_sent", worker=self._name, job=job_id, attempt=attempt,
                     ok=isinstance(outcome, JobDone))

    def _send(self, frames: list[Any]) -> None:
        """Send a control message; dropped if the send queue is full (liveness covers it)."""
        assert self._socket is not None
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("worker.send_dropped", worker=self._name)

    # -- compute threads -----------------------------------------------------------------

    def _compute(self, request: JobRequest) -> None:
        """Run the handler and pass its outcome back to the network thread."""
        self._finished.put((request.job_id, request.attempt, self._outcome(request)))
        self._waker.wake()

    def _outcome(self, request: JobRequest) -> JobOutcome:
        """The handler's outcome; an exception becomes a retryable FAIL naming it."""
        try:
            outcome = self._handler(request)
        except Exception as exc:
            log.error("worker.job_raised", exc_info=True, worker=self._name, job=request.job_id,
                      attempt=request.attempt)
            return JobFailed(f"{type(exc).__name__}: {exc}", retryable=True)
        if isinstance(outcome, JobFailed):
            return JobFailed(str(outcome.reason), bool(outcome.retryable))
        if not isinstance(outcome, JobDone):
            return JobFailed(f"TypeError: job handler returned {type(outcome).__name__}, not JobDone or JobFailed",
                             retryable=False)
        return outcome


def _encode_outcome(job_id: str, attempt: int, outcome: JobOutcome) -> list[Any]:
    """DONE or FAIL frames; a result that cannot be encoded is sent as a non-retryable FAIL."""
    ids = {"job_id": job_id, "attempt": attempt}
    if isinstance(outcome, JobDone):
        try:
            metas = [{"name": name, "media_type": media_type} for name, media_type, _ in outcome.artifacts]
            data = [blob for _, _, blob in outcome.artifacts]
            return encode(Command.DONE, {**ids, "result": outcome.result, "artifacts": metas}, data)
        except (ProtocolError, TypeError, ValueError) as exc:
            log.error("worker.result_unencodable", job=job_id, attempt=attempt, error=str(exc))
            outcome = JobFailed(f"{type(exc).__name__}: result cannot be sent: {exc}", retryable=False)
    return encode(Command.FAIL, {**ids, "reason": outcome.reason, "retryable": outcome.retryable})
