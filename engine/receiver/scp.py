"""The DICOM SCP: storage SOP classes with the common transfer syntaxes, plus Verification.

Rejections are pynetdicom's own: wrong called AE (1,1,7), calling AE not in the
allow-list (1,1,3), more than ``max_associations`` (2,3,2). Handlers live in
:mod:`engine.receiver.handlers`; the server is started last by the receiver role.
"""

from __future__ import annotations

import shutil
import ssl
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
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from engine.logs import get_logger
from engine.receiver.audit import AuditTrail
from engine.receiver.handlers import StoreHandler, handle_echo, log_association, tcp_nodelay
from engine.receiver.ledger import DuplicatePolicy, Ledger
from engine.receiver.pdu_guard import guard_pdu_lengths
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

    Checked when each connection opens, before the association is negotiated:
    below the mark the AE's association limit drops to 0, so pynetdicom answers
    A-ASSOCIATE-RJ (transient, service-provider, local-limit-exceeded: 2, 3, 2)
    and the sender retries later; open associations carry on (an instance that
    cannot be written still gets 0xA700). Above the mark the limit is restored.
    """

    def __init__(self, ae: AE, path: Path, min_free_bytes: int, max_associations: int) -> None:
        self._ae = ae
        self._path = path
        self._min_free = min_free_bytes
        self._max = max_associations
        self._low = False

    def free_bytes(self) -> int:
        """Free bytes on the spool's filesystem for an unprivileged writer."""
        return int(shutil.disk_usage(self._path).free)

    def on_connection(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN handler: set the association limit from the free space now."""
        free = self.free_bytes()
        low = free < self._min_free
        # The public setter refuses 0; pynetdicom's ACSE rejects (2, 3, 2) when the open acceptor
        # associations, this one included, exceed the stored limit. tests/unit/test_scp.py pins this.
        self._ae._maximum_associations = 0 if low else self._max
        if low != self._low:
            self._low = low
            if low:
                log.warning("scp.disk_low", free_bytes=free, min_free_bytes=self._min_free,
                            action="refusing new associations")
            else:
                log.info("scp.disk_ok", free_bytes=free, min_free_bytes=self._min_free)


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


class ReceiverSCP:
    """A pynetdicom storage SCP writing to the spool and the ledger.

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
                 plain: bool = True) -> None:
        self.ae_title = ae_title
        self.host = host
        self._port = port
        self._tls = tls
        self._tls_port = tls_port
        self._plain = plain
        self._audit = audit
        self._handler = StoreHandler(spool, ledger, on_instance_stored, duplicate_policy, max_instance_bytes, audit,
                                     max_study_bytes, priority_tag)
        ae = AE(ae_title=ae_title)
        ae.maximum_associations = max_associations
        ae.maximum_pdu_size = max_pdu
        self._max_pdu = max_pdu
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = acse_timeout, dimse_timeout, network_timeout
        ae.require_called_aet = True
        self._calling_hosts = calling_hosts(allowed_calling_aets)
        ae.require_calling_aet = sorted(self._calling_hosts)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._ae = ae
        self._disk = DiskGuard(ae, spool.root, min_free_bytes, max_associations)
        self._servers: dict[str, ThreadedAssociationServer] = {}

    def _check_calling_host(self, event: evt.Event) -> None:
        """EVT_REQUESTED: a calling AE bound to host addresses is rejected (1, 1, 3) from any other address."""
        requestor = event.assoc.requestor
        calling = str(requestor.primitive.calling_ae_title).strip() if requestor.primitive is not None else ""
        hosts = self._calling_hosts.get(calling)
        if hosts and requestor.address not in hosts:
            log.warning("association.calling_host_refused", calling_ae=calling, address=requestor.address)
            # As pynetdicom's own negotiation rejects: the A-ASSOCIATE-RJ (permanent, service user, calling AE not
            # recognised), EVT_REJECTED (the audit line), then stop the DUL once the PDU is out.
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            evt.trigger(event.assoc, evt.EVT_REJECTED, {})
            event.assoc.kill()

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

    def start(self) -> None:
        """Listen without blocking (plain and/or TLS); raises :class:`ReceiverError` naming the address if it cannot bind."""
        if self._servers:
            raise ReceiverError(f"the SCP on {self.host}:{self.port} is already started")
        handlers = [
            (evt.EVT_C_STORE, self._handler), (evt.EVT_C_ECHO, handle_echo), (evt.EVT_CONN_OPEN, tcp_nodelay),
            (evt.EVT_CONN_OPEN, self._disk.on_connection), (evt.EVT_CONN_OPEN, guard_pdu_lengths(self._max_pdu)),
            (evt.EVT_REQUESTED, self._check_calling_host),
            (evt.EVT_ACCEPTED, log_association), (evt.EVT_REJECTED, log_association),
            (evt.EVT_RELEASED, log_association), (evt.EVT_ABORTED, log_association),
            *(self._audit.handlers() if self._audit is not None else []),
        ]
        listeners = ([("plain", self._port, None)] if self._plain else []) + \
            ([("tls", self._tls_port, self._tls)] if self._tls is not None else [])
        for name, port, context in listeners:
            try:
                self._servers[name] = self._ae.start_server((self.host, port), block=False, evt_handlers=handlers,
                                                            ssl_context=context)
            except OSError as exc:
                self.stop(grace=0.0)
                raise ReceiverError(f"cannot listen for DICOM{' TLS' if context else ''} on {self.host}:{port}: "
                                    f"{exc.strerror or exc}") from exc
            log.info("scp.listening", ae_title=self.ae_title, host=self.host,
                     port=int(self._servers[name].server_address[1]), tls=context is not None)

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give open associations ``grace`` seconds to finish, then abort them."""
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.shutdown()
        deadline = time.monotonic() + grace
        for server in servers:
            for assoc in server.active_associations:
                assoc.join(max(0.0, deadline - time.monotonic()))
                if assoc.is_alive():
                    log.warning("scp.abort_on_stop", calling_ae=str(assoc.requestor.ae_title).strip())
                    assoc.abort()
                    assoc.join(1.0)
            log.info("scp.stopped", port=server.server_address[1])
