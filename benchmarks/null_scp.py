"""Acceptor floors: a storage SCP negotiated like ScanStream's that stores nothing and answers 0x0000.

Run: ``python -m benchmarks.null_scp PORT [--acceptor pynetdicom|scanstream]``
(used by :mod:`benchmarks.receive_compare`). Both accept the same presentation
contexts and maximum PDU as :class:`engine.receiver.scp.ReceiverSCP`, set
TCP_NODELAY on each connection and take each dataset's bytes as a handler
storing them would, then drop them: what the association and DIMSE handling
cost per instance before any spool, fsync or ledger. ``pynetdicom``: its
``AE.start_server`` (what the receiver used until it got its own acceptor);
``scanstream``: :class:`engine.receiver.scp.ReceiverSCP`'s acceptor
(:class:`engine.receiver.association.Association`) with a store that keeps nothing.
"""

from __future__ import annotations

import argparse
import socketserver
import threading

from pynetdicom import AE, evt

from engine.receiver.acse import AcceptorPolicy, AssociationInfo
from engine.receiver.association import Association, AssociationEvents, StoreRequest, Timeouts, nodelay
from engine.receiver.scp import supported_contexts
from engine.receiver.statuses import StoreStatus
from engine.dicom.store_scu import tcp_nodelay

AE_TITLE = "NULLSCP"
MAX_PDU = 4 * 1024 * 1024  # ScanStream's default receiver.max_pdu_bytes


def drop_instance(event: evt.Event) -> int:
    """pynetdicom's C-STORE handler: take the dataset's bytes, keep nothing."""
    dataset = event.request.DataSet
    if dataset is not None:
        dataset.getvalue()
    return int(StoreStatus.SUCCESS)


def serve_pynetdicom(port: int) -> None:
    ae = AE(ae_title=AE_TITLE)
    ae.maximum_pdu_size = MAX_PDU
    for context in supported_contexts():
        ae.add_supported_context(context.abstract_syntax, context.transfer_syntax)
    handlers = [(evt.EVT_C_STORE, drop_instance), (evt.EVT_C_ECHO, lambda event: int(StoreStatus.SUCCESS)),
                (evt.EVT_CONN_OPEN, tcp_nodelay)]
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)


class _Quiet(AssociationEvents):
    def accepted(self, info: AssociationInfo) -> None:
        """Nothing to record."""

    def rejected(self, info: AssociationInfo) -> None:
        """Nothing to record."""

    def ended(self, info: AssociationInfo, released: bool) -> None:
        """Nothing to record."""


def serve_scanstream(port: int) -> None:
    policy = AcceptorPolicy(AE_TITLE, supported_contexts(), MAX_PDU)

    def store(request: StoreRequest) -> int:
        return int(StoreStatus.SUCCESS)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            nodelay(self.request)
            Association(self.request, *self.client_address, policy, store, _Quiet(), Timeouts()).run()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("port", type=int)
    arguments.add_argument("--acceptor", choices=["pynetdicom", "scanstream"], default="pynetdicom")
    args = arguments.parse_args(argv)
    (serve_pynetdicom if args.acceptor == "pynetdicom" else serve_scanstream)(args.port)
    threading.Event().wait()  # until the benchmark terminates this process
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
