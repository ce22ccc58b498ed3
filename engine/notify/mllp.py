"""MLLP framing (HL7 v2 over TCP): a message between 0x0B and 0x1C 0x0D, one answer back."""

from __future__ import annotations

import socket

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ANSWER_BYTES = 1 << 20


class MllpError(Exception):
    """The exchange failed before a whole answer came back (connection refused, dropped, timed out)."""


def frame(message: bytes) -> bytes:
    """``message`` in an MLLP block."""
    return START_BLOCK + message + END_BLOCK


def exchange(host: str, port: int, message: bytes, timeout_s: float) -> bytes:
    """Send one framed message and return the peer's answer, unframed; raises :class:`MllpError`."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(frame(message))
            answer = bytearray()
            while not answer.endswith(END_BLOCK):
                chunk = sock.recv(65536)
                if not chunk:
                    raise MllpError(f"{host}:{port} closed the connection before a whole acknowledgement"
                                    f" ({len(answer)} bytes)")
                answer += chunk
                if len(answer) > MAX_ANSWER_BYTES:
                    raise MllpError(f"{host}:{port} answered more than {MAX_ANSWER_BYTES} bytes")
    except socket.timeout:
        raise MllpError(f"no acknowledgement from {host}:{port} within {timeout_s} s") from None
    except OSError as exc:
        raise MllpError(f"connection to {host}:{port} failed: {exc}") from None
    start = answer.find(START_BLOCK)
    if start < 0:
        raise MllpError(f"{host}:{port} answered without an MLLP start block")
    return bytes(answer[start + 1:-len(END_BLOCK)])
