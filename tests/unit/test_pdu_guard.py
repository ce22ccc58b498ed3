"""The PDU body reader and length guard on real socket pairs (no association)."""

from __future__ import annotations

import socket
import struct
import threading
from types import SimpleNamespace

import pytest

from engine.receiver.pdu_guard import MAX_CONTROL_PDU, PduTooLong, guard_pdu_lengths, read_exactly


def send_in_pieces(connection: socket.socket, data: bytes, piece: int, close: bool = False) -> threading.Thread:
    """Send ``data`` in ``piece``-byte writes from a thread (the reader sees many partial reads)."""

    def run() -> None:
        for start in range(0, len(data), piece):
            connection.sendall(data[start:start + piece])
        if close:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_read_exactly_gathers_every_piece_into_one_buffer() -> None:
    reader, writer = socket.socketpair()
    data = bytes(range(256)) * 4096  # 1 MiB, more than one socket buffer
    with reader, writer:
        sender = send_in_pieces(writer, data, 3000)
        assert read_exactly(reader, len(data)) == data
        sender.join()


def test_read_exactly_returns_what_came_when_the_peer_closes_early() -> None:
    reader, writer = socket.socketpair()
    with reader:
        sender = send_in_pieces(writer, b"x" * 1000, 100, close=True)
        assert read_exactly(reader, 5000) == b"x" * 1000  # pynetdicom reads a short PDU as Evt17
        sender.join()


def test_read_exactly_raises_on_timeout() -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        reader.settimeout(0.05)
        writer.sendall(b"abc")
        with pytest.raises(TimeoutError):
            read_exactly(reader, 10)


class Transport:
    """pynetdicom's AssociationSocket as the guard sees it: ``recv(n)`` (4 KiB reads) and ``socket``."""

    def __init__(self, connection: socket.socket) -> None:
        self.socket: socket.socket | None = connection
        self.calls = 0

    def recv(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        self.calls += 1
        data = bytearray()
        while len(data) < nr_bytes:
            piece = self.socket.recv(min(4096, nr_bytes - len(data)))
            if not piece:
                break
            data += piece
        return data


def guarded(connection: socket.socket, max_pdu: int) -> Transport:
    transport = Transport(connection)
    event = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=transport),
                                                  requestor=SimpleNamespace(address="127.0.0.1")))
    guard_pdu_lengths(max_pdu)(event)  # type: ignore[arg-type]
    return transport


def pdu(pdu_type: int, body: bytes, declared: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if declared is None else declared) + body


def test_guard_reads_headers_through_pynetdicom_and_bodies_in_one_buffer() -> None:
    reader, writer = socket.socketpair()
    body = bytes(range(256)) * 1024
    with reader, writer:
        transport = guarded(reader, 1 << 20)
        sender = send_in_pieces(writer, pdu(0x04, body) + pdu(0x05, b"\x00" * 4), 1 << 16)
        assert bytes(transport.recv(6)) == pdu(0x04, b"", len(body))
        assert transport.recv(len(body)) == body
        assert transport.calls == 1  # the body did not go through the 4 KiB reader
        assert bytes(transport.recv(6))[:1] == b"\x05"
        assert transport.recv(4) == b"\x00" * 4
        sender.join()


@pytest.mark.parametrize(("pdu_type", "declared"), [(0x04, (1 << 16) + 1), (0x01, MAX_CONTROL_PDU + 1)])
def test_guard_refuses_a_declared_length_over_the_limit_before_reading_it(pdu_type: int, declared: int) -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        transport = guarded(reader, 1 << 16)
        writer.sendall(pdu(pdu_type, b"", declared))
        with pytest.raises(PduTooLong, match=f"declares {declared} bytes"):
            transport.recv(6)


def test_guard_without_a_limit_reads_a_huge_declared_body_as_pynetdicom_does() -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        transport = guarded(reader, 0)
        writer.sendall(pdu(0x04, b"", 1 << 30))
        transport.recv(6)
        writer.sendall(b"abc")
        writer.shutdown(socket.SHUT_WR)
        assert transport.recv(1 << 30) == b"abc"  # not a 1 GiB buffer up front
        assert transport.calls == 2
