"""The job broker: a ROUTER socket on its own thread, handing jobs to workers by credit.

A worker's READY grants it ``capacity`` credits; the broker sends a JOB only to a
worker with credit left (most free credit first, round-robin among equals) and every
DONE/FAIL gives one credit back. Both sides heartbeat every ``heartbeat_interval``;
a worker silent for ``liveness`` intervals, or one a send cannot reach, is forgotten
and each job it held goes back to the :class:`JobSource` through ``lease_lost``.
Results for a lease the broker no longer holds are dropped, so a result reaches the
source at most once per lease. Every heartbeat the source's ``reap`` gets the jobs
connected workers hold, so it can renew their leases and take back any other. All socket I/O and every source call happen on the
broker thread; other threads only call :meth:`Broker.notify` and :meth:`Broker.stats`.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Protocol

import zmq
from zmq.auth.thread import ThreadAuthenticator

from engine.broker.protocol import Command, Message, ProtocolError, decode, encode
from engine.broker.security import CurveError, CurveServer, is_loopback, secure_server
from engine.logs import get_logger

log = get_logger(__name__)

_RECV_BATCH = 256
"""Messages read per wake-up before timers get a turn."""
_DISPATCH_BATCH = 256
"""Jobs claimed per dispatch pass before incoming messages get a turn."""


LEFT_CLEANLY = "worker disconnected"
"""``lease_lost`` reason when a worker said DISCONNECT (it stopped; the job did not fail)."""
RE_REGISTERED = "worker re-registered"
"""``lease_lost`` reason when a known worker sent READY again (it reconnected)."""
CLEAN_REASONS = frozenset({LEFT_CLEANLY, RE_REGISTERED})


class BrokerError(RuntimeError):
    """The broker cannot start (address in use, bad endpoint) or is used out of order."""


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker as the job source sees it."""

    identity: bytes
    name: str
    pid: int
    models: tuple[str, ...]
    host: str = ""


@dataclass
class OutgoingJob:
    """A claimed job: header fields for the worker plus one payload frame per instance file."""

    job_id: str
    attempt: int
    job: dict[str, Any]
    payload: list[bytes | memoryview]


@dataclass(frozen=True)
class BrokerStats:
    """A snapshot of the broker for health and metrics."""

    workers: int = 0
    jobs_in_flight: int = 0
    credits: int = 0
    jobs_sent: int = 0
    results: int = 0
    leases_lost: int = 0
    running: bool = False


@dataclass(frozen=True)
class WorkerSnapshot:
    """One connected worker as the console shows it; ``last_seen`` is when it was last heard (epoch seconds)."""

    name: str
    host: str
    pid: int
    models: tuple[str, ...]
    in_flight: int
    free_slots: int
    last_seen: float


class JobSource(Protocol):
    """Where jobs come from and results go; every method is called on the broker thread."""

    def next_job(self, worker: WorkerInfo) -> OutgoingJob | None:
        """Claim the next queued job this worker can run, or None when there is none."""

    def job_done(self, job_id: str, attempt: int, result: dict, artifacts: list[tuple[dict, memoryview]]) -> None:
        """Record a finished job and its artifacts (metadata map, bytes)."""

    def job_failed(self, job_id: str, attempt: int, reason: str, retryable: bool) -> None:
        """Record a job the worker reported as failed."""

    def lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        """The worker holding the job is gone: put the job back."""

    def reap(self, held: Collection[str]) -> None:
        """Called every heartbeat with the jobs connected workers hold: renew those leases, take back
        any other lease past its expiry (a job claimed but never sent, a result never filed)."""


class Waker:
    """A socketpair whose read end sits in a zmq Poller, so any thread can interrupt ``poll``."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The descriptor to register with ``zmq.Poller`` (POLLIN)."""
        return self._reader.fileno()

    def wake(self) -> None:
        """Make the poller return; cheap, never blocks, safe from any thread."""
        try:
            self._writer.send(b"\0")
        except OSError:  # buffer full (a wake-up is already pending) or closed during shutdown
            pass

    def drain(self) -> None:
        """Consume pending wake-ups so the next poll sleeps again."""
        try:
            while self._reader.recv(4096):
                pass
        except OSError:  # BlockingIOError once empty
            pass

    def close(self) -> None:
        """Close both ends; later ``wake`` calls do nothing."""
        self._writer.close()
        self._reader.close()


@dataclass
class _Worker:
    """The broker's book on one connected worker."""

    info: WorkerInfo
    credit: int
    expires_at: float
    leases: dict[str, int] = field(default_factory=dict)
    last_sent: int = 0
    last_seen: float = field(default_factory=time.time)

    def holds(self, job_id: str, attempt: int) -> bool:
        """Whether this worker holds the lease on this attempt of the job."""
        return self.leases.get(job_id) == attempt


class Broker:
    """ROUTER-socket job broker with credit-based flow control and heartbeated leases."""

    def __init__(self, bind: str, source: JobSource, *, heartbeat_interval: float = 1.0, liveness: int = 3,
                 context: zmq.Context | None = None, curve: CurveServer | None = None) -> None:
        if heartbeat_interval <= 0 or liveness < 1:
            raise ValueError("heartbeat_interval must be > 0 and liveness >= 1")
        if curve is None and not is_loopback(bind):
            raise CurveError(f"broker bind {bind} is reachable from other hosts: configure CurveZMQ "
                             "(broker.curve_secret_key and broker.curve_authorized_keys; see `scanstream keys`)")
        self._bind = bind
        self._curve = curve
        self._authenticator: ThreadAuthenticator | None = None
        self._source = source
        self._interval = heartbeat_interval
        self._timeout = heartbeat_interval * liveness
        self._owns_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket | None = None
        self._address: str | None = None
        self._thread: threading.Thread | None = None
        self._waker = Waker()
        self._stopping = threading.Event()
        self._workers: dict[bytes, _Worker] = {}
        self._dispatch_due = False
        self._send_seq = 0
        self._counters = {"jobs_sent": 0, "results": 0, "leases_lost": 0}
        self._stats = BrokerStats()
        self._snapshots: tuple[WorkerSnapshot, ...] = ()

    @property
    def bound_address(self) -> str:
        """The endpoint actually bound (a ``*`` port resolved), available after :meth:`start`."""
        if self._address is None:
            raise BrokerError("broker is not started")
        return self._address

    def start(self) -> None:
        """Bind the ROUTER socket (raising BrokerError naming the address on failure) and start the thread."""
        if self._thread is not None or self._stopping.is_set():
            raise BrokerError("a broker starts once; create a new one after stop()")
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self._curve is not None:
            try:
                self._authenticator = secure_server(sock, self._context, self._curve)
            except CurveError:
                sock.close()
                raise
        try:
            sock.bind(self._bind)
        except zmq.ZMQError as exc:
            sock.close()
            raise BrokerError(f"cannot bind broker to {self._bind}: {exc.strerror}") from exc
        self._socket = sock
        self._address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="scanstream-broker", daemon=True)
        self._stats = BrokerStats(running=True)
        self._thread.start()
        log.info("broker.started", address=self._address)

    def notify(self) -> None:
        """Tell the broker new jobs may be queued; safe and cheap from any thread."""
        self._waker.wake()

    def stats(self) -> BrokerStats:
        """The latest snapshot (rebuilt by the broker thread after every event)."""
        return self._stats

    def alive(self) -> bool:
        """Whether the broker thread is running (False before start, after stop, or once it crashed)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def workers(self) -> tuple[WorkerSnapshot, ...]:
        """The connected workers, by name (rebuilt by the broker thread with the stats)."""
        return self._snapshots

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the socket.

        Leases still held are left to the job source (the ledger requeues leased jobs at
        start); workers notice the silence and reconnect.
        """
        if self._stopping.is_set() and (self._thread is None or not self._thread.is_alive()):
            return
        self._stopping.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("broker.stop_timeout", timeout_s=timeout)
                return
        self._waker.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        if self._owns_context:
            self._context.term()
        log.info("broker.stopped", address=self._address)

    # -- broker thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self._socket is not None
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        next_beat = time.monotonic() + self._interval
        try:
            while not self._stopping.is_set():
                events = dict(poller.poll(self._poll_timeout_ms(next_beat)))
                if self._waker.fileno() in events:
                    self._waker.drain()
                    self._dispatch_due = True
                if self._socket in events:
                    self._receive()
                now = time.monotonic()
                self._expire(now)
                if now >= next_beat:
                    self._heartbeat()
                    self._call("*", self._source.reap, {job for w in self._workers.values() for job in w.leases})
                    self._dispatch_due = True  # also picks up jobs queued without notify()
                    next_beat = now + self._interval
                if self._dispatch_due:
                    self._dispatch()
                self._publish_stats(running=True)
        except Exception:
            log.error("broker.crashed", exc_info=True)
            raise
        finally:
            self._socket.close(linger=0)
            self._publish_stats(running=False)

    def _poll_timeout_ms(self, next_beat: float) -> int:
        deadline = min([next_beat, *(w.expires_at for w in self._workers.values())])
        return max(0, int((deadline - time.monotonic()) * 1000) + 1)

    def _receive(self) -> None:
        """Handle the messages waiting on the socket (up to a batch)."""
        assert self._socket is not None
        for _ in range(_RECV_BATCH):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames[0].bytes, frames[1:])

    def _handle(self, identity: bytes, frames: list[zmq.Frame]) -> None:
        """Route one message from ``identity`` to its command handler."""
        try:
            message = decode(frames)
        except ProtocolError as exc:
            log.warning("broker.bad_message", peer=identity.hex(), error=str(exc))
            return
        if message.cmd is Command.READY:
            self._register(identity, message)
            return
        worker = self._workers.get(identity)
        if worker is None:
            if message.cmd is not Command.DISCONNECT:
                log.info("broker.unknown_peer", peer=identity.hex(), cmd=str(message.cmd))
                self._send(identity, Command.DISCONNECT)
            return
        worker.expires_at = time.monotonic() + self._timeout
        worker.last_seen = time.time()
        if message.cmd is Command.DONE:
            self._complete(worker, message)
        elif message.cmd is Command.FAIL:
            self._fail(worker, message)
        elif message.cmd is Command.DISCONNECT:
            self._forget(worker, LEFT_CLEANLY)
        elif message.cmd is Command.JOB:
            log.warning("broker.unexpected_command", worker=worker.info.name, cmd=str(message.cmd))

    def _register(self, identity: bytes, message: Message) -> None:
        """READY: (re)start the worker's book with ``capacity`` credits."""
        existing = self._workers.get(identity)
        if existing is not None:
            self._forget(existing, RE_REGISTERED)
        header = message.header
        info = WorkerInfo(identity, header["worker"], header["pid"], tuple(header["models"]),
                          str(header.get("host", "")))
        self._workers[identity] = _Worker(info, credit=header["capacity"],
                                          expires_at=time.monotonic() + self._timeout)
        self._dispatch_due = True
        log.info("worker.connected", worker=info.name, pid=info.pid, capacity=header["capacity"],
                 models=",".join(info.models))

    def _settle(self, worker: _Worker, message: Message) -> bool:
        """Return the credit for a DONE/FAIL; True if it settles a lease this worker holds.

        A stale result still returns a credit: the worker left that busy slot out of the
        capacity in its last READY, and it is free now.
        """
        job_id, attempt = message.header["job_id"], message.header["attempt"]
        worker.credit += 1
        self._dispatch_due = True
        if not worker.holds(job_id, attempt):
            log.warning("broker.stale_result", job=job_id, attempt=attempt, worker=worker.info.name,
                        cmd=str(message.cmd))
            return False
        del worker.leases[job_id]
        self._counters["results"] += 1
        return True

    def _complete(self, worker: _Worker, message: Message) -> None:
        """DONE: hand result and artifacts to the source."""
        if not self._settle(worker, message):
            return
        header = message.header
        artifacts = list(zip(header["artifacts"], message.payload))
        log.info("broker.job_done", job=header["job_id"], attempt=header["attempt"], worker=worker.info.name,
                 artifacts=len(artifacts), bytes=sum(view.nbytes for view in message.payload))
        self._call(header["job_id"], self._source.job_done, header["job_id"], header["attempt"],
                   header["result"], artifacts)

    def _fail(self, worker: _Worker, message: Message) -> None:
        """FAIL: hand the reason to the source."""
        if not self._settle(worker, message):
            return
        header = message.header
        log.info("broker.job_failed", job=header["job_id"], attempt=header["attempt"], worker=worker.info.name,
                 retryable=header["retryable"])
        self._call(header["job_id"], self._source.job_failed, header["job_id"], header["attempt"],
                   header["reason"], header["retryable"])

    def _forget(self, worker: _Worker, reason: str) -> None:
        """Drop a worker and give each of its leases back to the source."""
        self._workers.pop(worker.info.identity, None)
        if worker.leases:  # a worker leaving idle is routine; one leaving with jobs is worth a warning
            log.warning("worker.lost", worker=worker.info.name, reason=reason, jobs=len(worker.leases))
        else:
            log.info("worker.left", worker=worker.info.name, reason=reason)
        for job_id, attempt in worker.leases.items():
            self._counters["leases_lost"] += 1
            self._call(job_id, self._source.lease_lost, job_id, attempt, reason)
        worker.leases.clear()
        self._dispatch_due = True

    def _expire(self, now: float) -> None:
        """Forget workers silent for ``liveness`` intervals, asking them to READY again."""
        for worker in [w for w in self._workers.values() if now >= w.expires_at]:
            self._forget(worker, "heartbeat timeout")
            self._send(worker.info.identity, Command.DISCONNECT)

    def _heartbeat(self) -> None:
        """Send a HEARTBEAT to every worker (a failed send forgets the worker)."""
        for identity in list(self._workers):
            self._send(identity, Command.HEARTBEAT)

    def _dispatch(self) -> None:
        """Send jobs while some worker has credit and the source has a job for it."""
        self._dispatch_due = False
        passed: set[bytes] = set()
        for _ in range(_DISPATCH_BATCH):
            worker = self._pick(passed)
            if worker is None:
                return
            job = self._claim(worker)
            if job is None:
                passed.add(worker.info.identity)
            else:
                self._send_job(worker, job)
        self._dispatch_due = True  # more to do after the socket has had a turn

    def _pick(self, passed: set[bytes]) -> _Worker | None:
        """The worker with the most free credit, least recently sent to among equals."""
        candidates = [w for w in self._workers.values() if w.credit > 0 and w.info.identity not in passed]
        if not candidates:
            return None
        return min(candidates, key=lambda w: (-w.credit, w.last_sent))

    def _claim(self, worker: _Worker) -> OutgoingJob | None:
        try:
            return self._source.next_job(worker.info)
        except Exception:
            log.error("broker.source_error", callback="next_job", worker=worker.info.name, exc_info=True)
            return None

    def _send_job(self, worker: _Worker, job: OutgoingJob) -> None:
        """Lease ``job`` to ``worker`` and send it; an unencodable job fails without retry."""
        try:
            frames = encode(Command.JOB, {"job_id": job.job_id, "attempt": job.attempt, "job": job.job},
                            job.payload)
        except ProtocolError as exc:
            log.error("broker.job_unencodable", job=job.job_id, attempt=job.attempt, error=str(exc))
            self._call(job.job_id, self._source.job_failed, job.job_id, job.attempt, f"ProtocolError: {exc}", False)
            return
        worker.leases[job.job_id] = job.attempt
        worker.credit -= 1
        self._send_seq += 1
        worker.last_sent = self._send_seq
        if self._send_frames(worker.info.identity, frames):
            self._counters["jobs_sent"] += 1
            log.info("broker.job_sent", job=job.job_id, attempt=job.attempt, worker=worker.info.name,
                     frames=len(job.payload))

    def _send(self, identity: bytes, cmd: Command) -> None:
        self._send_frames(identity, encode(cmd))

    def _send_frames(self, identity: bytes, frames: list[Any]) -> bool:
        """Send to one peer; a peer that is gone or not reading is forgotten (False)."""
        assert self._socket is not None
        try:
            self._socket.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            worker = self._workers.get(identity)
            if worker is not None:
                self._forget(worker, f"unreachable: {exc.strerror}")
            return False

    def _call(self, job_id: str, callback: Callable[..., None], *args: Any) -> None:
        """Call a source callback; its exceptions are logged, never fatal to the broker."""
        try:
            callback(*args)
        except Exception:
            log.error("broker.source_error", callback=getattr(callback, "__name__", "?"), job=job_id,
                      exc_info=True)

    def _publish_stats(self, running: bool) -> None:
        workers = self._workers.values()
        self._stats = BrokerStats(
            workers=len(self._workers),
            jobs_in_flight=sum(len(w.leases) for w in workers),
            credits=sum(max(w.credit, 0) for w in workers),
            running=running,
            **self._counters,
        )
        self._snapshots = tuple(sorted(
            (WorkerSnapshot(w.info.name, w.info.host, w.info.pid, w.info.models, len(w.leases), max(w.credit, 0),
                            w.last_seen) for w in workers), key=lambda snapshot: snapshot.name))
