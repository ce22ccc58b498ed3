"""The DICOM SCP: storage SOP classes with the common transfer syntaxes, plus Verification.

Each listener (plain and/or DICOM TLS) accepts connections on a thread and
serves each on a thread of its own (:class:`engine.receiver.association.Association`:
negotiation with pynetdicom's PDU codec, then ScanStream's data phase).
Rejections: wrong called AE (1,1,7), calling AE not in the allow-list or bound
to other hosts (1,1,3), more than ``max_associations`` or the spool's disk
below its low-water mark (2,3,2). The C-STORE handler lives in
:mod:`engine.receiver.handlers`; the server is started last by the receiver role.
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification

from engine.logs import get_logger
from engine.receiver.acse import AcceptorPolicy
from engine.receiver.association import Association, Timeouts, nodelay
from engine.receiver.audit import AuditTrail
from engine.receiver.handlers import AssociationLog, StoreHandler
from engine.ledger.store import DuplicatePolicy, Ledger
from engine.receiver.spool import Spool

log = get_logger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
    RLELossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
]


class ReceiverError(Exception):
    """The SCP could not start (the message names the address)."""


class DiskGuard:
    """Refuses new associations while the spool's filesystem has less than ``min_free_bytes`` free.

    Checked when each connection opens: below the mark the association is
    rejected (transient, service-provider, local-limit-exceeded: 2, 3, 2) and
    the sender retries later; open associations carry on (an instance that
    cannot be written still gets 0xA700). Crossing the mark either way is logged.
    """

    def __init__(self, path: Path, min_free_bytes: int) -> None:
        self._path = path
        self._min_free = min_free_bytes
        self._low = False

    def free_bytes(self) -> int:
        """Free bytes on the spool's filesystem for an unprivileged writer."""
        return int(shutil.disk_usage(self._path).free)

    def is_low(self) -> bool:
        """Whether a new association must be refused now."""
        if not self._min_free:
            return False
        free = self.free_bytes()
        low = free < self._min_free
        if low != self._low:
            self._low = low
            if low:
                log.warning("scp.disk_low", free_bytes=free, min_free_bytes=self._min_free,
                            action="refusing new associations")
            else:
                log.info("scp.disk_ok", free_bytes=free, min_free_bytes=self._min_free)
        return low


def calling_hosts(entries: Sequence[str]) -> dict[str, set[str]]:
    """``["CT1", "CT2@10.0.0.5"]`` -> ``{"CT1": set(), "CT2": {"10.0.0.5"}}`` (empty set: any address).

    An AE listed both bare and with hosts is bound to those hosts.
    """
    hosts: dict[str, set[str]] = {}
    for entry in entries:
        title, _, host = entry.partition("@")
        bound = hosts.setdefault(title.strip(), set())
        if host:
            bound.add(host)
    return hosts


def supported_contexts() -> list[PresentationContext]:
    """Every storage SOP class with :data:`TRANSFER_SYNTAXES`, and Verification (little endian)."""
    contexts = []
    for storage in AllStoragePresentationContexts:
        context = PresentationContext()
        context.abstract_syntax = storage.abstract_syntax
        context.transfer_syntax = list(TRANSFER_SYNTAXES)
        contexts.append(context)
    verification = PresentationContext()
    verification.abstract_syntax = Verification
    verification.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return contexts + [verification]


class _Listener(socketserver.ThreadingTCPServer):
    """One listening socket; each connection is served on its own thread by the SCP."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], serve: Callable[[socket.socket, tuple[str, int]], None]) -> None:
        self._serve = serve
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, socketserver.BaseRequestHandler)

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self._serve(request, client_address)


class ReceiverSCP:
    """A storage SCP writing to the spool and the ledger.

    ``on_instance_stored(series_uid)`` is called on the association thread after the
    instance is durable (spool fsynced, ledger committed). ``port=0`` binds a free
    port; :attr:`port` tells which once started. ``max_pdu=0`` means unlimited.
    """

    def __init__(self, ae_title: str, host: str, port: int, spool: Spool, ledger: Ledger,
                 on_instance_stored: Callable[[str], object], *, max_associations: int = 16,
                 allowed_calling_aets: Sequence[str] = (), max_instance_bytes: int = 2**31 - 1,
                 max_pdu: int = 4 * 1024 * 1024, acse_timeout: float = 30, dimse_timeout: float = 60,
                 network_timeout: float = 60, duplicate_policy: DuplicatePolicy = "keep_first",
                 min_free_bytes: int = 0, audit: AuditTrail | None = None, max_study_bytes: int = 0,
                 priority_tag: str = "", tls: ssl.SSLContext | None = None, tls_port: int = 2762,
                 plain: bool = True, quota_full: Callable[[], bool] = lambda: False) -> None:
        self.ae_title = ae_title
        self._quota_full = quota_full
        self.host = host
        self._port = port
        self._tls = tls
        self._tls_port = tls_port
        self._plain = plain
        self._max_associations = max_associations
        self._handler = StoreHandler(spool, ledger, on_instance_stored, duplicate_policy, max_instance_bytes, audit,
                                     max_study_bytes, priority_tag)
        self._events = AssociationLog(audit)
        self._policy = AcceptorPolicy(ae_title, supported_contexts(), max_pdu, calling_hosts(allowed_calling_aets))
        self._timeouts = Timeouts(acse=acse_timeout, network=network_timeout, dimse=dimse_timeout)
        self._disk = DiskGuard(spool.root, min_free_bytes)
        self._servers: dict[str, _Listener] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._active: set[Association] = set()

    def disk_low(self) -> bool:
        """Whether the spool's disk is below ``min_free_bytes``, or the data folder over ``retention.quota_bytes``
        with nothing left to recycle (new associations are refused; STOW too)."""
        return self._disk.is_low() or self._quota_full()

    @property
    def store_handler(self) -> StoreHandler:
        """The C-STORE handler (STOW-RS stores through it too: same checks, caps and durability)."""
        return self._handler

    @property
    def port(self) -> int:
        """The bound plain port (the real one when started with port 0)."""
        if "plain" in self._servers:
            return int(self._servers["plain"].server_address[1])
        return self._port

    @property
    def tls_port(self) -> int | None:
        """The bound DICOM TLS port, or None without TLS."""
        if "tls" in self._servers:
            return int(self._servers["tls"].server_address[1])
        return self._tls_port if self._tls is not None else None

    def active_associations(self) -> list[Association]:
        """The connections being served now (negotiating or associated)."""
        with self._lock:
            return list(self._active)

    def _serve(self, connection: socket.socket, address: tuple[str, int], context: ssl.SSLContext | None) -> None:
        """One connection, on its own thread: TLS handshake if any, then the association."""
        try:
            nodelay(connection)
            if context is not None:
                connection.settimeout(self._timeouts.acse)
                connection = context.wrap_socket(connection, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("tls.handshake_failed" if context is not None else "scp.connection_failed",
                        address=f"{address[0]}:{address[1]}", error=type(exc).__name__)
            connection.close()
            return
        with self._lock:
            over_limit = len(self._active) >= self._max_associations
        over_limit = over_limit or self.disk_low()
        association = Association(connection, address[0], address[1], self._policy, self._handler, self._events,
                                  self._timeouts, over_limit)
        with self._lock:
            self._active.add(association)
        try:
            association.run()
        finally:
            with self._lock:
                self._active.discard(association)

    def start(self) -> None:
        """Listen without blocking (plain and/or TLS); raises :class:`ReceiverError` naming the address if it cannot bind."""
        if self._servers:
            raise ReceiverError(f"the SCP on {self.host}:{self.port} is already started")
        listeners = ([("plain", self._port, None)] if self._plain else []) + \
            ([("tls", self._tls_port, self._tls)] if self._tls is not None else [])
        for name, port, context in listeners:
            try:
                server = _Listener((self.host, port),
                                   lambda connection, address, context=context: self._serve(connection, address,
                                                                                            context))
            except OSError as exc:
                self.stop(grace=0.0)
                raise ReceiverError(f"cannot listen for DICOM{' TLS' if context else ''} on {self.host}:{port}: "
                                    f"{exc.strerror or exc}") from exc
            self._servers[name] = server
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                      name=f"scp-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
            log.info("scp.listening", ae_title=self.ae_title, host=self.host, port=int(server.server_address[1]),
                     tls=context is not None)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give open associations ``grace`` seconds to finish, then abort them."""
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.shutdown()
            server.server_close()
            log.info("scp.stopped", port=server.server_address[1])
        for thread in self._threads:
            thread.join()
        self._threads = []
        deadline = time.monotonic() + grace
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.02)
        for association in self.active_associations():
            log.warning("scp.abort_on_stop", calling_ae=association.info.calling_ae if association.info else "")
            association.abort()
        deadline = time.monotonic() + 1.0
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.02)
