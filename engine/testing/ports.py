"""Finding a free TCP port on loopback (demo and tests pick their ports this way)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on loopback right now (another process may take it later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    with socket.socket() as probe:
        probe.settimeout(5.0)
        return probe.connect_ex((host, port)) == 0
