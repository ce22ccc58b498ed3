"""The data phase's wire format: PDU framing, P-DATA-TF value items, and DIMSE command sets (PS3.7, PS3.8).

What the receiver's own acceptor (:mod:`engine.receiver.association`) needs to
take C-STORE and C-ECHO requests and answer them: read a PDU with its declared
length checked before any of it is read (a peer declaring 4 GiB would
otherwise have the receiver buffer whatever it sends) and its body gathered
into one buffer with as few socket reads as the kernel allows, split a P-DATA-TF into its
presentation data values, decode a request's command set (always implicit VR
little endian, group 0000) and encode the response's. Datasets are never
decoded here: their fragments are joined as they came.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from engine.dicom.encode import padded

HEADER_BYTES = 6
MAX_CONTROL_PDU = 1 << 20  # an A-ASSOCIATE-RQ with 128 contexts and user identity is tens of KiB
MAX_PREALLOCATED = 64 << 20  # a longer declared body (max_pdu 0: no limit) is gathered as it comes

A_ASSOCIATE_RQ = 0x01
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_ABORT = 0x07

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101  # CommandDataSetType: no dataset follows

# Command set tags (group 0000)
AFFECTED_SOP_CLASS_UID = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
PRIORITY = 0x00000700
COMMAND_DATASET_TYPE = 0x00000800
STATUS = 0x00000900
AFFECTED_SOP_INSTANCE_UID = 0x00001000

RELEASE_RP = struct.pack(">BBL", 0x06, 0, 4) + bytes(4)


class DimseError(ValueError):
    """A PDU or command set that cannot be taken (the message is safe to log: no data values)."""


class PduTooLong(OSError):
    """The peer declared a PDU longer than this SCP accepts."""

    def __init__(self, pdu_type: int, declared: int, limit: int) -> None:
        super().__init__(f"PDU type 0x{pdu_type:02X} declares {declared} bytes; the limit is {limit}")
        self.pdu_type, self.declared, self.limit = pdu_type, declared, limit


class ConnectionClosed(OSError):
    """The peer closed the connection in the middle of a PDU, or before the next one."""


@dataclass(frozen=True)
class Command:
    """The fields of a request's command set the receiver acts on."""

    field: int
    message_id: int
    has_dataset: bool
    sop_class_uid: str
    sop_instance_uid: str


def pdu_limit(pdu_type: int, max_pdu: int) -> int | None:
    """The largest PDU body accepted for ``pdu_type`` (None: no limit, when ``max_pdu`` is 0 for P-DATA)."""
    if pdu_type == P_DATA_TF:
        return max_pdu or None
    return MAX_CONTROL_PDU


def read_exactly(connection: socket.socket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` into one buffer with as few calls as the kernel allows; shorter when the peer closes
    first. Socket errors and timeouts propagate."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    while received < nr_bytes:
        count = connection.recv_into(view[received:], nr_bytes - received)
        if count == 0:
            del view
            del buffer[received:]
            return buffer
        received += count
    return buffer


def read_pdu(connection: socket.socket, max_pdu: int) -> tuple[int, bytearray]:
    """One PDU: ``(type, body)``. A P-DATA-TF longer than ``max_pdu`` (0: no limit) or any other PDU over
    the control limit raises :class:`PduTooLong` before its body is read."""
    header = read_exactly(connection, HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise ConnectionClosed("connection closed" if not header else "connection closed inside a PDU header")
    pdu_type, _, length = struct.unpack(">BBL", header)
    limit = pdu_limit(pdu_type, max_pdu)
    if limit is not None and length > limit:
        raise PduTooLong(pdu_type, length, limit)
    if length > MAX_PREALLOCATED:
        body = bytearray()
        while len(body) < length:
            piece = read_exactly(connection, min(MAX_PREALLOCATED, length - len(body)))
            if not piece:
                break
            body += piece
    else:
        body = read_exactly(connection, length)
    if len(body) < length:
        raise ConnectionClosed(f"connection closed after {len(body)} of {length} bytes of a PDU")
    return pdu_type, body


def presentation_data_values(body: bytearray | bytes) -> Iterator[tuple[int, bool, bool, memoryview]]:
    """Each value item of a P-DATA-TF body: ``(context_id, is_command, is_last, fragment)``."""
    view = memoryview(body)
    offset = 0
    while offset < len(view):
        if len(view) - offset < 6:
            raise DimseError("P-DATA-TF ends inside a value item header")
        (item_length,) = struct.unpack_from(">L", view, offset)
        if item_length < 2 or offset + 4 + item_length > len(view):
            raise DimseError(f"P-DATA-TF value item of {item_length} bytes does not fit the PDU")
        context_id, control = view[offset + 4], view[offset + 5]
        yield context_id, bool(control & 0x01), bool(control & 0x02), view[offset + 6:offset + 4 + item_length]
        offset += 4 + item_length


def p_data_tf(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF carrying one whole command set (the last and only fragment)."""
    item = struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBL", P_DATA_TF, 0, len(item)) + item


def abort_pdu(source: int = 0x02, reason: int = 0x00) -> bytes:
    """A-ABORT: ``source`` 0 service user, 2 service provider; ``reason`` only for the provider."""
    return struct.pack(">BBLBBBB", A_ABORT, 0, 4, 0, 0, source, reason if source == 0x02 else 0)


def decode_command(raw: bytes | bytearray) -> Command:
    """The command set of a request; raises :class:`DimseError` when it is cut or lacks a required field."""
    values: dict[int, bytes] = {}
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if len(view) - offset < 8:
            raise DimseError("command set ends inside an element header")
        group, element, length = struct.unpack_from("<HHL", view, offset)
        offset += 8
        if offset + length > len(view):
            raise DimseError(f"command element ({group:04X},{element:04X}) runs past the command set")
        values[(group << 16) | element] = bytes(view[offset:offset + length])
        offset += length
    try:
        field = _ushort(values[COMMAND_FIELD])
        message_id = _ushort(values[MESSAGE_ID])
        dataset_type = _ushort(values[COMMAND_DATASET_TYPE])
    except (KeyError, struct.error) as exc:
        raise DimseError("command set lacks CommandField, MessageID or CommandDataSetType") from exc
    return Command(field, message_id, dataset_type != NO_DATASET, _uid(values.get(AFFECTED_SOP_CLASS_UID, b"")),
                   _uid(values.get(AFFECTED_SOP_INSTANCE_UID, b"")))


def _ushort(value: bytes) -> int:
    return int(struct.unpack("<H", value)[0])


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set: CommandGroupLength, then ``elements`` (tag, value) in ascending tag order."""
    body = b"".join(_element(tag, value) for tag, value in sorted(elements))
    return _element(0x00000000, struct.pack("<L", len(body))) + body


def response(request: Command, status: int) -> bytes:
    """The C-STORE-RSP or C-ECHO-RSP command set answering ``request`` with ``status``."""
    elements = [(AFFECTED_SOP_CLASS_UID, padded(request.sop_class_uid, b"\x00")),
                (COMMAND_FIELD, struct.pack("<H", request.field | 0x8000)),
                (MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", request.message_id)),
                (COMMAND_DATASET_TYPE, struct.pack("<H", NO_DATASET)),
                (STATUS, struct.pack("<H", status))]
    if request.field == C_STORE_RQ:
        elements.append((AFFECTED_SOP_INSTANCE_UID, padded(request.sop_instance_uid, b"\x00")))
    return encode_command(elements)
