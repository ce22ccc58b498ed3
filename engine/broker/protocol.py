"""Wire protocol between the broker (ROUTER) and workers (DEALER): constants and framing.

Every message is ``[header, *payload]``. ``header`` is a msgpack map with at least
``{"v": PROTOCOL_VERSION, "cmd": <command>}`` plus the command's fields; payload
frames are raw bytes (DICOM instances on JOB, artifacts on DONE) that travel
untouched and are sent and received without copying. Nothing is ever pickled, so a
peer can only make us decode plain data.

Fields per command (checked by :func:`encode` and :func:`decode`):

- READY (worker -> broker): ``worker`` str, ``pid`` int, ``capacity`` int >= 0
  (jobs it can take now), ``models`` list of str; optional ``host`` str (shown by the console).
- JOB (broker -> worker): ``job_id`` str, ``attempt`` int, ``job`` map; one payload
  frame per instance file.
- HEARTBEAT (both ways): no fields.
- DONE (worker -> broker): ``job_id``, ``attempt``, ``result`` map, ``artifacts`` list
  of ``{"name": str, "media_type": str}``, one per payload frame.
- FAIL (worker -> broker): ``job_id``, ``attempt``, ``reason`` str, ``retryable`` bool.
- DISCONNECT (either way): the worker leaves, or the broker asks it to send READY again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import msgpack
import zmq

PROTOCOL_VERSION = 1

FrameLike = Union[bytes, bytearray, memoryview, zmq.Frame]
"""What a payload or received frame may be; all expose the buffer protocol."""


class Command(enum.StrEnum):
    """Message kinds; the value is what goes on the wire."""

    READY = "READY"
    JOB = "JOB"
    HEARTBEAT = "HEARTBEAT"
    DONE = "DONE"
    FAIL = "FAIL"
    DISCONNECT = "DISCONNECT"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (the receiver logs and drops it)."""


_FIELDS: dict[Command, dict[str, type]] = {
    Command.READY: {"worker": str, "pid": int, "capacity": int, "models": list},
    Command.JOB: {"job_id": str, "attempt": int, "job": dict},
    Command.HEARTBEAT: {},
    Command.DONE: {"job_id": str, "attempt": int, "result": dict, "artifacts": list},
    Command.FAIL: {"job_id": str, "attempt": int, "reason": str, "retryable": bool},
    Command.DISCONNECT: {},
}
_WITH_PAYLOAD = frozenset({Command.JOB, Command.DONE})
_RESERVED = frozenset({"v", "cmd"})


@dataclass(frozen=True)
class Message:
    """A decoded message: its command, the whole header map, and the payload buffers."""

    cmd: Command
    header: dict[str, Any]
    payload: list[memoryview]


def _check_fields(cmd: Command, fields: Mapping[str, Any], payload_count: int) -> None:
    """Raise ProtocolError unless ``fields`` has every field of ``cmd`` with the right type."""
    for name, kind in _FIELDS[cmd].items():
        if name not in fields:
            raise ProtocolError(f"{cmd} lacks field {name!r}")
        value = fields[name]
        wrong_bool = kind is int and isinstance(value, bool)
        if wrong_bool or not isinstance(value, kind):
            raise ProtocolError(f"{cmd} field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    if payload_count and cmd not in _WITH_PAYLOAD:
        raise ProtocolError(f"{cmd} carries no payload, got {payload_count} frames")
    if cmd is Command.READY:
        if fields["capacity"] < 0:
            raise ProtocolError("READY field 'capacity' must be >= 0")
        if not all(isinstance(model, str) for model in fields["models"]):
            raise ProtocolError("READY field 'models' must be a list of str")
    if cmd is Command.DONE:
        artifacts = fields["artifacts"]
        if len(artifacts) != payload_count:
            raise ProtocolError(f"DONE lists {len(artifacts)} artifacts for {payload_count} payload frames")
        for meta in artifacts:
            if not (isinstance(meta, dict) and isinstance(meta.get("name"), str)
                    and isinstance(meta.get("media_type"), str)):
                raise ProtocolError("DONE artifacts must be maps with str 'name' and 'media_type'")


def encode(cmd: Command | str, fields: Mapping[str, Any] | None = None,
           payload: Sequence[bytes | bytearray | memoryview] = ()) -> list[bytes | bytearray | memoryview]:
    """Frames for one message; send them with ``send_multipart(frames, copy=False)``.

    Payload objects are passed through as they are (no copy). Raises ProtocolError for
    an unknown command, missing or mistyped fields, or fields msgpack cannot encode.
    """
    command = _command(cmd)
    fields = dict(fields or {})
    clash = _RESERVED.intersection(fields)
    if clash:
        raise ProtocolError(f"{command} fields may not set reserved keys {sorted(clash)}")
    _check_fields(command, fields, len(payload))
    for index, frame in enumerate(payload):
        try:
            memoryview(frame).release()
        except TypeError:
            raise ProtocolError(f"{command} payload frame {index} is {type(frame).__name__}, not bytes") from None
    try:
        header = msgpack.packb({"v": PROTOCOL_VERSION, "cmd": command.value, **fields}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"{command} header cannot be encoded: {exc}") from exc
    return [header, *payload]


def decode(frames: Sequence[FrameLike]) -> Message:
    """Parse and validate received frames (without the ROUTER identity frame).

    Payload frames come back as memoryviews over the received buffers (no copy).
    Raises ProtocolError for garbage, a wrong version, an unknown command or bad fields.
    """
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = msgpack.unpackb(_as_bytes(frames[0]), raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"header is not valid msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a map, got {type(header).__name__}")
    version = header.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})")
    command = _command(header.get("cmd"))
    payload = [_as_view(frame) for frame in frames[1:]]
    _check_fields(command, header, len(payload))
    return Message(cmd=command, header=header, payload=payload)


def _command(value: object) -> Command:
    try:
        return Command(value)
    except ValueError:
        raise ProtocolError(f"unknown command {value!r}") from None


def _as_bytes(frame: FrameLike) -> bytes:
    if isinstance(frame, zmq.Frame):
        return frame.bytes
    return bytes(frame)


def _as_view(frame: FrameLike) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)
