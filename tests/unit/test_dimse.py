"""The data phase's wire format: PDU reading on real socket pairs, value items, command sets."""

from __future__ import annotations

import io
import socket
import struct
import threading

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dimse_messages import C_ECHO_RSP as PynetdicomEchoRsp
from pynetdicom.dimse_messages import C_STORE_RQ as PynetdicomStoreRq
from pynetdicom.dimse_messages import C_STORE_RSP as PynetdicomStoreRsp

from engine.receiver.dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    MAX_CONTROL_PDU,
    Command,
    ConnectionClosed,
    DimseError,
    PduTooLong,
    abort_pdu,
    decode_command,
    p_data_tf,
    presentation_data_values,
    read_exactly,
    read_pdu,
    response,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
SOP = "1.2.3.4.5"


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


def pdu(pdu_type: int, body: bytes, declared: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if declared is None else declared) + body


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
        assert read_exactly(reader, 5000) == b"x" * 1000
        sender.join()


def test_read_exactly_raises_on_timeout() -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        reader.settimeout(0.05)
        writer.sendall(b"abc")
        with pytest.raises(TimeoutError):
            read_exactly(reader, 10)


def test_read_pdu_returns_type_and_whole_body() -> None:
    reader, writer = socket.socketpair()
    body = bytes(range(256)) * 1024
    with reader, writer:
        sender = send_in_pieces(writer, pdu(0x04, body) + pdu(0x05, bytes(4)), 1 << 16)
        assert read_pdu(reader, 1 << 20) == (0x04, body)
        assert read_pdu(reader, 1 << 20) == (0x05, bytes(4))
        sender.join()


@pytest.mark.parametrize(("pdu_type", "declared"), [(0x04, (1 << 16) + 1), (0x01, MAX_CONTROL_PDU + 1)])
def test_read_pdu_refuses_a_declared_length_over_the_limit_before_reading_it(pdu_type: int, declared: int) -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        writer.sendall(pdu(pdu_type, b"", declared))
        with pytest.raises(PduTooLong, match=f"declares {declared} bytes"):
            read_pdu(reader, 1 << 16)


def test_read_pdu_without_a_limit_does_not_allocate_the_declared_length_up_front() -> None:
    reader, writer = socket.socketpair()
    with reader, writer:
        writer.sendall(pdu(0x04, b"abc", 0xFFFFFFF0))
        writer.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionClosed, match="after 3 of"):
            read_pdu(reader, 0)


@pytest.mark.parametrize("data", [b"", b"\x04\x00\x00"])
def test_read_pdu_names_a_connection_closed_before_or_inside_a_header(data: bytes) -> None:
    reader, writer = socket.socketpair()
    with reader:
        writer.sendall(data)
        writer.close()
        with pytest.raises(ConnectionClosed):
            read_pdu(reader, 1 << 16)


def test_value_items_are_split_with_their_context_and_flags() -> None:
    body = struct.pack(">LBB", 5, 1, 0x03) + b"cmd" + struct.pack(">LBB", 4, 3, 0x00) + b"ds" + \
        struct.pack(">LBB", 3, 3, 0x02) + b"!"
    items = [(c, command, last, bytes(f)) for c, command, last, f in presentation_data_values(body)]
    assert items == [(1, True, True, b"cmd"), (3, False, False, b"ds"), (3, False, True, b"!")]


@pytest.mark.parametrize("body", [struct.pack(">LBB", 10, 1, 3) + b"abc", b"\x00\x00", struct.pack(">LBB", 1, 1, 3)])
def test_a_value_item_that_does_not_fit_is_an_error(body: bytes) -> None:
    with pytest.raises(DimseError):
        list(presentation_data_values(body))


def pynetdicom_command(primitive: object, message_class: type) -> bytes:
    """The command set pynetdicom encodes for ``primitive`` (implicit VR little endian)."""
    message = message_class()
    message.primitive_to_message(primitive)
    return bytes(message.encode_msg(1, 16384).__next__().presentation_data_value_list[0][1][1:])


def test_a_store_request_from_pynetdicom_decodes() -> None:
    request = C_STORE()
    request.MessageID, request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = 7, CT, SOP
    request.Priority = 2
    request.DataSet = io.BytesIO(b"\x00" * 8)
    command = decode_command(pynetdicom_command(request, PynetdicomStoreRq))
    assert command == Command(C_STORE_RQ, 7, True, CT, SOP)


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC001])
def test_store_response_is_the_command_set_pynetdicom_encodes(status: int) -> None:
    answer = C_STORE()
    answer.MessageIDBeingRespondedTo, answer.AffectedSOPClassUID, answer.AffectedSOPInstanceUID = 7, CT, SOP
    answer.Status = status
    assert response(Command(C_STORE_RQ, 7, True, CT, SOP), status) == pynetdicom_command(answer, PynetdicomStoreRsp)


def test_echo_response_is_the_command_set_pynetdicom_encodes() -> None:
    answer = C_ECHO()
    answer.MessageIDBeingRespondedTo, answer.AffectedSOPClassUID, answer.Status = 3, "1.2.840.10008.1.1", 0
    assert response(Command(C_ECHO_RQ, 3, False, "1.2.840.10008.1.1", ""), 0) == \
        pynetdicom_command(answer, PynetdicomEchoRsp)


def test_a_command_set_without_its_required_fields_or_cut_short_is_an_error() -> None:
    dataset = Dataset()
    dataset.MessageID = 1
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, dataset)
    with pytest.raises(DimseError, match="lacks"):
        decode_command(buffer.getvalue())
    with pytest.raises(DimseError, match="runs past"):
        decode_command(buffer.getvalue()[:-1])


def test_p_data_tf_and_abort_framing() -> None:
    assert p_data_tf(5, b"abcd") == b"\x04\x00" + struct.pack(">L", 10) + struct.pack(">LBB", 6, 5, 3) + b"abcd"
    assert abort_pdu() == bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 0])
    assert abort_pdu(0x00, 0x05) == bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0])
