"""CurveZMQ on the broker port: encrypted links and an allow-list of worker keys.

Keys are ZeroMQ certificate files as pyzmq's ``zmq.auth`` writes them
(``NAME.key`` public, ``NAME.key_secret`` secret); ``scanstream keys NAME`` makes a
pair. The broker holds its secret certificate and a folder of the public
certificates of the workers it accepts (read at start: restart the receiver to
add a worker); a worker holds its own secret certificate and the broker's
public one. A ZAP handler (pyzmq's thread authenticator) refuses any worker
whose key is not in the folder: its connection never completes, so it never
sees a job. Off loopback the broker refuses to start without Curve.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from engine.logs import get_logger

log = get_logger(__name__)


class CurveError(RuntimeError):
    """A key file is missing or unreadable, or Curve is required and not configured (the message says which)."""


@dataclass(frozen=True)
class CurveServer:
    """The broker side: its secret certificate and the folder of accepted worker public certificates."""

    secret_key: Path
    authorized_keys: Path


@dataclass(frozen=True)
class CurveClient:
    """The worker side: its secret certificate and the broker's public certificate."""

    secret_key: Path
    server_key: Path


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address or ``localhost``."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard (*): reachable from other hosts


def create_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    secret_path = folder / f"{name}.key_secret"
    try:  # created 0600 before a byte of the key is written: pyzmq then truncates and fills it, mode kept
        os.close(os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise CurveError(f"{secret_path} exists; remove it first or pick another name") from None
    os.chmod(secret_path, 0o600)  # the umask may have taken bits away, never added any
    public, secret = zmq.auth.create_certificates(str(folder), name)
    return Path(public), Path(secret)


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as error:
        raise CurveError(f"cannot read Curve certificate {path}: {error}") from error
    if need_secret and not secret:
        raise CurveError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def secure_server(socket: zmq.Socket, context: zmq.Context, server: CurveServer) -> ThreadAuthenticator:
    """Make ``socket`` a Curve server that accepts only the keys in ``server.authorized_keys``.

    Returns the running authenticator; stop it when the socket closes.
    """
    if not server.authorized_keys.is_dir():
        raise CurveError(f"authorized worker keys folder {server.authorized_keys} does not exist")
    public, secret = _load(server.secret_key, need_secret=True)
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(server.authorized_keys))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    count = len(list(server.authorized_keys.glob("*.key")))
    log.info("broker.curve_enabled", authorized_keys=count)
    return authenticator


def secure_client(socket: zmq.Socket, client: CurveClient) -> None:
    """Make ``socket`` a Curve client with its own key pair, trusting the broker's public key."""
    public, secret = _load(client.secret_key, need_secret=True)
    server_public, _ = _load(client.server_key, need_secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
