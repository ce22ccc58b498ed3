"""Framing of broker messages: round trips, zero-copy payloads, and rejection of bad input."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from engine.broker.protocol import PROTOCOL_VERSION, Command, ProtocolError, decode, encode

EXAMPLES = {
    Command.READY: ({"worker": "host:12:0", "pid": 12, "capacity": 2, "models": ["lung", "liver"]}, []),
    Command.JOB: ({"job_id": "j1", "attempt": 2, "job": {"model": "lung", "series": {"rows": 512}}},
                  [b"instance-1", b"instance-2"]),
    Command.HEARTBEAT: ({}, []),
    Command.DONE: ({"job_id": "j1", "attempt": 2, "result": {"summary": "ok", "findings": []},
                    "artifacts": [{"name": "result.json", "media_type": "application/json"}]}, [b"{}"]),
    Command.FAIL: ({"job_id": "j1", "attempt": 2, "reason": "ValueError: bad", "retryable": False}, []),
    Command.DISCONNECT: ({}, []),
}


def _header(**fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize("cmd", list(Command))
def test_every_command_round_trips(cmd: Command) -> None:
    fields, payload = EXAMPLES[cmd]
    message = decode(encode(cmd, fields, payload))
    assert message.cmd is cmd
    assert message.header == {"v": PROTOCOL_VERSION, "cmd": cmd.value, **fields}
    assert [bytes(view) for view in message.payload] == payload


def test_encode_passes_payload_objects_through_uncopied() -> None:
    blob = bytes(1_000_000)
    view = memoryview(bytearray(10))
    frames = encode(Command.JOB, {"job_id": "j", "attempt": 1, "job": {}}, [blob, view])
    assert frames[1] is blob and frames[2] is view


def test_decode_returns_views_over_the_received_buffers() -> None:
    buffer = bytearray(b"abc")
    message = decode([encode(Command.JOB, {"job_id": "j", "attempt": 1, "job": {}})[0], buffer])
    buffer[0] = ord("x")
    assert bytes(message.payload[0]) == b"xbc"


def test_large_payload_survives_a_zero_copy_socket_round_trip() -> None:
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        port = sender.bind_to_random_port("tcp://127.0.0.1")
        receiver.connect(f"tcp://127.0.0.1:{port}")
        blob = bytes(range(256)) * 16_384  # 4 MiB
        sender.send_multipart(encode(Command.JOB, {"job_id": "j", "attempt": 1, "job": {}}, [blob]), copy=False)
        assert receiver.poll(5000)
        frames = receiver.recv_multipart(copy=False)
        message = decode(frames)
        assert message.payload[0].obj is frames[1]  # a view of the received frame, not a copy
        assert message.payload[0] == blob
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        context.term()


@pytest.mark.parametrize(
    ("frames", "complaint"),
    [
        ([], "empty message"),
        ([b"\xc1garbage"], "not valid msgpack"),
        ([b""], "not valid msgpack"),
        ([msgpack.packb([1, 2])], "must be a map"),
        ([_header(v=2, cmd="HEARTBEAT")], "version 2"),
        ([_header(cmd="HEARTBEAT")], "version None"),
        ([_header(v=1, cmd="EXPLODE")], "unknown command 'EXPLODE'"),
        ([_header(v=1)], "unknown command None"),
        ([_header(v=1, cmd="FAIL", job_id="j", attempt=1, reason="x")], "lacks field 'retryable'"),
        ([_header(v=1, cmd="JOB", job_id="j", attempt="1", job={})], "'attempt' must be int"),
        ([_header(v=1, cmd="JOB", job_id="j", attempt=True, job={})], "'attempt' must be int"),
        ([_header(v=1, cmd="READY", worker="w", pid=1, capacity=-1, models=[])], "'capacity' must be >= 0"),
        ([_header(v=1, cmd="READY", worker="w", pid=1, capacity=1, models=[3])], "list of str"),
        ([_header(v=1, cmd="HEARTBEAT"), b"extra"], "carries no payload"),
        ([_header(v=1, cmd="DONE", job_id="j", attempt=1, result={}, artifacts=[])] + [b"x"], "0 artifacts for 1"),
        ([_header(v=1, cmd="DONE", job_id="j", attempt=1, result={}, artifacts=[{"name": "a"}]), b"x"],
         "'media_type'"),
    ],
)
def test_decode_rejects_bad_messages(frames: list[bytes], complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint.replace("(", r"\(")):
        decode(frames)


def test_encode_rejects_what_decode_would_reject() -> None:
    with pytest.raises(ProtocolError, match="unknown command"):
        encode("EXPLODE", {})
    with pytest.raises(ProtocolError, match="lacks field 'job_id'"):
        encode(Command.JOB, {"attempt": 1, "job": {}})
    with pytest.raises(ProtocolError, match="reserved keys"):
        encode(Command.HEARTBEAT, {"v": 9})
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        encode(Command.JOB, {"job_id": "j", "attempt": 1, "job": {"when": object()}})
    with pytest.raises(ProtocolError, match="payload frame 0 is str"):
        encode(Command.JOB, {"job_id": "j", "attempt": 1, "job": {}}, ["text"])  # type: ignore[list-item]


def test_command_accepts_its_wire_name() -> None:
    assert decode(encode("HEARTBEAT")).cmd is Command.HEARTBEAT
