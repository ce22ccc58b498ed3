"""The job queue over ZeroMQ: the broker (receiver side) and the worker link.

- :mod:`engine.broker.protocol`: message framing (msgpack header + raw payload frames).
- :mod:`engine.broker.broker`: :class:`Broker`, a ROUTER on its own thread handing jobs
  from a :class:`JobSource` to workers by credit, with heartbeated leases.
- :mod:`engine.broker.worker_link`: :class:`WorkerLink`, the worker's DEALER side that
  runs jobs on compute threads and sends the outcomes back.
"""

from engine.broker.broker import (
    Broker,
    BrokerError,
    BrokerStats,
    JobSource,
    OutgoingJob,
    WorkerInfo,
)
from engine.broker.protocol import PROTOCOL_VERSION, Command, Message, ProtocolError, decode, encode
from engine.broker.worker_link import JobDone, JobFailed, JobOutcome, JobRequest, WorkerLink

__all__ = [
    "PROTOCOL_VERSION",
    "Broker",
    "BrokerError",
    "BrokerStats",
    "Command",
    "JobDone",
    "JobFailed",
    "JobOutcome",
    "JobRequest",
    "JobSource",
    "Message",
    "OutgoingJob",
    "ProtocolError",
    "WorkerInfo",
    "WorkerLink",
    "decode",
    "encode",
]
