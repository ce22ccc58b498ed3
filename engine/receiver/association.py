"""One association on one accepted connection: negotiate, take C-STORE and C-ECHO requests, end.

The receiver's own acceptor for the data phase (it replaced pynetdicom's for
speed: docs/architecture.md, "Receiver"). Requests are taken one at a time as
the DICOM upper layer delivers them; each dataset's fragments are joined as
they arrive and handed to the store handler with the command's UIDs and the
context's transfer syntax, and the response goes out once the handler answers
(after the instance is durable). How an association ends:

- A-RELEASE-RQ: A-RELEASE-RP, then the connection closes when the peer closes
  it (or after ``acse_timeout``); ``released``.
- A-ABORT from the peer, the peer closing, or a read error: ``aborted``.
- Nothing for ``network_timeout`` between messages, or ``dimse_timeout``
  inside one; an unexpected or malformed PDU; a value item on a context that
  was not accepted: A-ABORT (service provider), ``aborted``.
- A PDU declaring more than the negotiated maximum: the connection is closed at
  once, before any of it is read (``pdu.too_long``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from engine.logs import get_logger
from engine.receiver.acse import (
    AcceptorPolicy,
    Accepted,
    AssociationInfo,
    NegotiationError,
    accept,
    decode_request,
    info_of,
    reject_pdu,
    rejection,
)
from engine.receiver.dimse import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    P_DATA_TF,
    RELEASE_RP,
    Command,
    DimseError,
    PduTooLong,
    abort_pdu,
    decode_command,
    p_data_tf,
    presentation_data_values,
    read_pdu,
    response,
)

log = get_logger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211

# A-ABORT provider reasons (PS3.8 9.3.8)
UNRECOGNIZED_PDU = 0x01
UNEXPECTED_PDU = 0x02
INVALID_PDU_PARAMETER = 0x06


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE as the store handler sees it: who sent it, its UIDs, its context's transfer syntax, its bytes."""

    peer: AssociationInfo
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes


class AssociationEvents(Protocol):
    """What the acceptor reports (logs and the audit trail)."""

    def accepted(self, info: AssociationInfo) -> None: ...

    def rejected(self, info: AssociationInfo) -> None: ...

    def ended(self, info: AssociationInfo, released: bool) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    """Seconds: for the A-ASSOCIATE-RQ and the peer's close after release (acse), between messages (network),
    inside a message (dimse)."""

    acse: float = 30.0
    network: float = 60.0
    dimse: float = 60.0


class Aborted(Exception):
    """The association is to be aborted with this provider reason (the message is safe to log)."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class Association:
    """Serves one connection from the A-ASSOCIATE-RQ to the end; :meth:`run` never raises."""

    def __init__(self, connection: socket.socket, host: str, port: int, policy: AcceptorPolicy,
                 store: Callable[[StoreRequest], int], events: AssociationEvents, timeouts: Timeouts,
                 over_limit: bool = False) -> None:
        self.connection = connection
        self.host, self.port = host, port
        self.policy = policy
        self.store = store
        self.events = events
        self.timeouts = timeouts
        self.over_limit = over_limit
        self.info: AssociationInfo | None = None
        self._stopping = False
        self._send_lock = threading.Lock()  # whole PDUs only: the stopping receiver's A-ABORT comes from another thread

    def abort(self) -> None:
        """From another thread (the receiver stopping): send A-ABORT and close; :meth:`run` ends as aborted."""
        self._stopping = True
        self._send_quietly(abort_pdu(0x02, 0x00))
        with contextlib.suppress(OSError):  # already closed by the peer: nothing left to wake
            self.connection.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        """Negotiate, then serve requests until the association ends; the connection is closed on return."""
        try:
            accepted = self._negotiate()
            if accepted is not None:
                self._serve(accepted)
        finally:
            self.connection.close()

    # -- negotiation ----------------------------------------------------------------------

    def _negotiate(self) -> Accepted | None:
        self.connection.settimeout(self.timeouts.acse)
        try:
            pdu_type, body = read_pdu(self.connection, self.policy.max_pdu)
        except PduTooLong as exc:
            self._too_long(exc)
            return None
        except OSError as exc:  # includes the peer closing and the ACSE timeout
            log.info("assoc.no_request", address=f"{self.host}:{self.port}", error=type(exc).__name__)
            return None
        if pdu_type != A_ASSOCIATE_RQ:
            self._send_quietly(abort_pdu(0x02, UNEXPECTED_PDU))
            log.warning("assoc.unexpected_pdu", pdu_type=f"0x{pdu_type:02X}", address=f"{self.host}:{self.port}")
            return None
        try:
            request = decode_request(body)
        except NegotiationError as exc:
            self._send_quietly(abort_pdu(0x02, INVALID_PDU_PARAMETER))
            log.warning("assoc.bad_request", reason=str(exc), address=f"{self.host}:{self.port}")
            return None
        self.info = info = info_of(request, self.host, self.port)
        refusal = rejection(info, self.policy, self.over_limit)
        if refusal is not None:
            if refusal.reason == 3 and self.policy.calling_hosts.get(info.calling_ae):
                log.warning("association.calling_host_refused", calling_ae=info.calling_ae, address=self.host)
            self._send_quietly(reject_pdu(refusal))
            self.events.rejected(info)
            self._await_close()
            return None
        try:
            accepted = accept(request, self.policy)
        except (ValueError, IndexError, TypeError, AttributeError) as exc:  # a proposal pynetdicom cannot negotiate
            self._send_quietly(abort_pdu(0x02, INVALID_PDU_PARAMETER))
            log.warning("assoc.bad_request", reason=f"presentation contexts cannot be negotiated "
                        f"({type(exc).__name__})", calling_ae=info.calling_ae, address=info.address)
            return None
        if not self._send_quietly(accepted.pdu):
            return None
        self.events.accepted(info)
        return accepted

    # -- data phase -----------------------------------------------------------------------

    def _serve(self, accepted: Accepted) -> None:
        info = self.info
        assert info is not None
        released = False
        try:
            released = self._data_phase(accepted)
        except Aborted as exc:
            log.warning("assoc.aborting", reason=str(exc), calling_ae=info.calling_ae, address=info.address)
            self._send_quietly(abort_pdu(0x02, exc.reason))
        except PduTooLong as exc:
            self._too_long(exc)
        except TimeoutError:
            log.warning("assoc.timeout", calling_ae=info.calling_ae, address=info.address)
            self._send_quietly(abort_pdu(0x02, 0x00))
        except OSError as exc:  # the peer closed or reset the connection, or the receiver is stopping
            if not self._stopping:
                log.info("assoc.connection_lost", calling_ae=info.calling_ae, address=info.address,
                         error=type(exc).__name__)
        except Exception:  # noqa: BLE001 - a defect here must still end the association and its audit line
            log.error("assoc.failed", calling_ae=info.calling_ae, address=info.address, exc_info=True)
            self._send_quietly(abort_pdu(0x02, 0x00))
        self.events.ended(info, released)
        if released:
            self._await_close()

    def _data_phase(self, accepted: Accepted) -> bool:
        """Serve messages; True when the peer released the association, False when it aborted."""
        message = _Message()
        while True:
            self.connection.settimeout(self.timeouts.dimse if message.started() else self.timeouts.network)
            pdu_type, body = read_pdu(self.connection, self.policy.max_pdu)
            if pdu_type == A_RELEASE_RQ:
                self._send(RELEASE_RP)
                return True
            if pdu_type == A_ABORT:
                return False
            for item_context, is_command, is_last, fragment in _value_items(pdu_type, body, accepted):
                if not message.add(item_context, is_command, is_last, fragment):
                    continue
                command = message.command
                assert command is not None
                if command.field != C_CANCEL_RQ:  # a cancel gets no response (PS3.7 9.3.2.3)
                    status = self._handle(command, accepted, message.context_id, b"".join(message.dataset))
                    self._send(p_data_tf(message.context_id, response(command, status)))
                message = _Message()

    def _handle(self, command: Command, accepted: Accepted, context_id: int, dataset: bytes) -> int:
        """The status answering one request."""
        info = self.info
        assert info is not None
        abstract = accepted.abstract_syntaxes[context_id]
        if command.field == C_ECHO_RQ:
            return SUCCESS
        if command.field != C_STORE_RQ:
            log.warning("dimse.unrecognized_operation", command_field=f"0x{command.field:04X}",
                        calling_ae=info.calling_ae, address=info.address)
            return UNRECOGNIZED_OPERATION
        if abstract == VERIFICATION or command.sop_class_uid != abstract:
            log.warning("dimse.sop_class_not_on_context", calling_ae=info.calling_ae, address=info.address)
            return SOP_CLASS_NOT_SUPPORTED
        return self.store(StoreRequest(info, command.sop_class_uid, command.sop_instance_uid,
                                       accepted.transfer_syntaxes[context_id], dataset))

    # -- helpers --------------------------------------------------------------------------

    def _too_long(self, exc: PduTooLong) -> None:
        log.warning("pdu.too_long", pdu_type=f"0x{exc.pdu_type:02X}", declared=exc.declared, limit=exc.limit,
                    address=f"{self.host}:{self.port}")

    def _send(self, pdu: bytes) -> None:
        with self._send_lock:
            self.connection.sendall(pdu)

    def _send_quietly(self, pdu: bytes) -> bool:
        """Send a PDU when the association is ending anyway; False when the connection is already gone."""
        try:
            self._send(pdu)
            return True
        except OSError:
            return False

    def _await_close(self) -> None:
        """After A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes; wait for that (at most ``acse`` seconds)."""
        deadline = time.monotonic() + self.timeouts.acse
        try:
            while time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.connection.recv(4096):
                    return
        except OSError:
            return


def nodelay(connection: socket.socket) -> None:
    """Disable Nagle: no ~40 ms stall per response against a peer's delayed ACKs."""
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _value_items(pdu_type: int, body: bytes | bytearray, accepted: Accepted) -> list[tuple[int, bool, bool, memoryview]]:
    """The value items of a P-DATA-TF, each on an accepted context; anything else in the data phase aborts."""
    if pdu_type != P_DATA_TF:
        reason = UNEXPECTED_PDU if pdu_type in (0x01, 0x02, 0x03, 0x06) else UNRECOGNIZED_PDU
        raise Aborted(reason, f"PDU type 0x{pdu_type:02X} in the data phase")
    try:
        values = list(presentation_data_values(body))
    except DimseError as exc:
        raise Aborted(INVALID_PDU_PARAMETER, str(exc)) from exc
    for item_context, _, _, _ in values:
        if item_context not in accepted.abstract_syntaxes:
            raise Aborted(INVALID_PDU_PARAMETER, f"value item on presentation context {item_context}, "
                                                 "which was not accepted")
    return values


class _Message:
    """The request being received: its command fragments, then its command, then its dataset's fragments."""

    def __init__(self) -> None:
        self.context_id = 0
        self.command: Command | None = None
        self.dataset: list[memoryview] = []  # joined once, when the last fragment arrives
        self._command_bytes = bytearray()

    def started(self) -> bool:
        """Whether any fragment of this message has arrived (the DIMSE timeout applies then)."""
        return bool(self._command_bytes) or self.command is not None

    def add(self, context_id: int, is_command: bool, is_last: bool, fragment: memoryview) -> bool:
        """Take one value item; True once the message is whole (its command, and its dataset if it has one)."""
        if self.started() and context_id != self.context_id:
            raise Aborted(INVALID_PDU_PARAMETER, "a message's fragments on two presentation contexts")
        self.context_id = context_id
        if not is_command:
            if self.command is None:
                raise Aborted(INVALID_PDU_PARAMETER, "a dataset fragment before its command")
            self.dataset.append(fragment)
            return is_last
        if self.command is not None:
            raise Aborted(INVALID_PDU_PARAMETER, "a command fragment inside a dataset")
        self._command_bytes += fragment
        if not is_last:
            return False
        try:
            self.command = decode_command(self._command_bytes)
        except DimseError as exc:
            raise Aborted(INVALID_PDU_PARAMETER, str(exc)) from exc
        return not self.command.has_dataset
