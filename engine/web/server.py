"""uvicorn serving the ASGI app on a thread of its own in the receiver process, plain or over TLS.

The listening socket is bound in the constructor, so a port in use fails at
start-up naming ``http.port``, and ``port`` is known at once (port 0 picks a
free one). ``stop`` ends event streams, lets requests in progress finish for a
few seconds, and returns.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Sequence

import uvicorn
from fastapi import FastAPI

from engine.config import ConfigError, EngineConfig
from engine.dicom.tls import server_context
from engine.logs import get_logger
from engine.web.auth.deps import is_loopback

log = get_logger(__name__)
START_TIMEOUT_S = 15.0
GRACE_S = 3  # requests in progress (a held study report, an event stream) get this long at stop


class WebError(ConfigError):
    """The HTTP port cannot be used; the message names the setting (the CLI reports it as a config error)."""


def tls_context(config: EngineConfig) -> ssl.SSLContext | None:
    """The console's TLS context (TLS 1.2+, its own files or the receiver's), or None without TLS."""
    files = config.http.tls_files(config.receiver)
    if files is None:
        return None
    certificate, private_key, prefix = files
    return server_context(certificate, private_key, prefix=prefix)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as error:
        raise WebError(f"http.host/http.port: cannot listen on {host}:{port} ({error.strerror or error})") from None
    sock.set_inheritable(True)
    return sock


class WebServer:
    """One uvicorn server on one thread."""

    def __init__(self, app: FastAPI, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                 forwarded_allow_ips: Sequence[str] = ()) -> None:
        self._app = app
        self._host = host
        self._socket = _listen(host, port)
        self._port = int(self._socket.getsockname()[1])
        self._tls = tls
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # start/stop chatter; errors still come through
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                                proxy_headers=bool(forwarded_allow_ips),
                                forwarded_allow_ips=list(forwarded_allow_ips) or None,
                                timeout_graceful_shutdown=GRACE_S,
                                ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, name="http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._port

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    def start(self) -> None:
        """Serve, returning once uvicorn accepts connections (WebError if it cannot start)."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise WebError(f"the HTTP server did not start on port {self.port}")
            time.sleep(0.01)
        log.info("http.listening", port=self.port, scheme=self.scheme)
        if self._tls is None and not is_loopback(self._host):
            log.warning("http.plain_on_network", host=self._host,
                        hint="sign-in is refused over plain HTTP from other hosts: set http.tls_enabled, or put a "
                             "TLS proxy in front and list it in http.forwarded_allow_ips")

    def stop(self) -> None:
        """End event streams, finish requests in progress (up to a few seconds), close the port."""
        self._app.state.stopping.set()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(GRACE_S + 5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        self._socket.close()
