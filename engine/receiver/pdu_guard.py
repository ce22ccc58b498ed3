"""Refuse a PDU whose declared length is over the limit before reading any of it; read the rest in one buffer.

pynetdicom reads a PDU's 6-byte header, then as many bytes as the header
declares, growing one buffer: a peer declaring 4 GiB would make the receiver
buffer whatever it sends until a timeout. This guard wraps the accepted
connection's ``recv`` (that one socket object only, bound on EVT_CONN_OPEN):
it sees each header and, when a P-DATA-TF declares more than the maximum PDU
this SCP negotiated (plus its 6-byte header) or any other PDU more than
:data:`MAX_CONTROL_PDU`, closes the connection at once (pynetdicom treats the
raised ``OSError`` as the transport closing: Evt17).

It also reads each PDU body straight into one buffer of the declared size
(:func:`read_exactly`, up to :data:`MAX_PREALLOCATED`): pynetdicom's own ``recv`` asks the socket for 4 KiB at
a time and grows a ``bytearray`` with each piece, ~130 calls per 512 KiB slice
(strace during ``benchmarks.receive_compare``), each a Python round trip on the
receive path.
"""

from __future__ import annotations

import struct
import socket
from typing import Callable

from pynetdicom import evt

from engine.logs import get_logger

log = get_logger(__name__)

P_DATA_TF = 0x04
HEADER_BYTES = 6
MAX_CONTROL_PDU = 1 << 20  # A-ASSOCIATE-RQ with 128 contexts and user identity is tens of KiB
MAX_PREALLOCATED = 64 << 20  # a body declared longer (max_pdu 0: no limit) is read as pynetdicom does, as it comes


class PduTooLong(OSError):
    """The peer declared a PDU longer than this SCP accepts."""


def pdu_limit(pdu_type: int, max_pdu: int) -> int | None:
    """The largest PDU body accepted for ``pdu_type`` (None: no limit, when ``max_pdu`` is 0 for P-DATA)."""
    if pdu_type == P_DATA_TF:
        return max_pdu or None
    return MAX_CONTROL_PDU


def read_exactly(connection: socket.socket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` into one buffer with as few calls as the kernel allows.

    Like pynetdicom's ``AssociationSocket.recv``: blocks until all arrived, and
    returns the shorter buffer when the peer closes first (pynetdicom reads that
    as a broken PDU, Evt17); socket errors and timeouts propagate as from it.
    """
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


def guard_pdu_lengths(max_pdu: int) -> Callable[[evt.Event], None]:
    """An EVT_CONN_OPEN handler installing the length check and the body reader on the new connection."""

    def install(event: evt.Event) -> None:
        transport = event.assoc.dul.socket
        if transport is None:
            return
        original = transport.recv
        expecting_header = [True]

        def recv(nr_bytes: int) -> bytearray:
            if not expecting_header[0]:
                expecting_header[0] = True
                connection = transport.socket
                if connection is None or nr_bytes > MAX_PREALLOCATED:
                    return original(nr_bytes)
                return read_exactly(connection, nr_bytes)
            data = original(nr_bytes)
            if nr_bytes == HEADER_BYTES and len(data) == HEADER_BYTES:
                pdu_type, _, length = struct.unpack(">BBL", bytes(data))
                limit = pdu_limit(pdu_type, max_pdu)
                if limit is not None and length > limit:
                    log.warning("pdu.too_long", pdu_type=f"0x{pdu_type:02X}", declared=length, limit=limit,
                                address=event.assoc.requestor.address)
                    raise PduTooLong(f"PDU type 0x{pdu_type:02X} declares {length} bytes; the limit is {limit}")
                expecting_header[0] = length == 0
            return data

        transport.recv = recv  # this connection's socket object only

    return install
