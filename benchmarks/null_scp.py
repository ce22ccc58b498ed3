"""pynetdicom's floor: a storage SCP negotiated like ScanStream's that stores nothing and answers 0x0000.

Run: ``python -m benchmarks.null_scp PORT`` (used by :mod:`benchmarks.receive_compare`).
It accepts the same presentation contexts, maximum PDU and per-connection
setup (TCP_NODELAY, the PDU length guard and body reader) as
:class:`engine.receiver.scp.ReceiverSCP`, takes each dataset's bytes from
pynetdicom and drops them: what pynetdicom's association and DIMSE handling
cost per instance, before any spool, fsync or ledger.
"""

from __future__ import annotations

import argparse
import threading

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from engine.receiver.handlers import handle_echo, tcp_nodelay
from engine.receiver.pdu_guard import guard_pdu_lengths
from engine.receiver.scp import TRANSFER_SYNTAXES
from engine.receiver.statuses import StoreStatus

AE_TITLE = "NULLSCP"
MAX_PDU = 4 * 1024 * 1024  # ScanStream's default receiver.max_pdu_bytes


def drop_instance(event: evt.Event) -> int:
    """C-STORE: read the dataset's bytes as ScanStream's handler does, keep nothing."""
    dataset = event.request.DataSet
    if dataset is not None:
        dataset.getvalue()
    return int(StoreStatus.SUCCESS)


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("port", type=int)
    args = arguments.parse_args(argv)
    ae = AE(ae_title=AE_TITLE)
    ae.maximum_pdu_size = MAX_PDU
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = [(evt.EVT_C_STORE, drop_instance), (evt.EVT_C_ECHO, handle_echo), (evt.EVT_CONN_OPEN, tcp_nodelay),
                (evt.EVT_CONN_OPEN, guard_pdu_lengths(MAX_PDU))]
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=handlers)
    try:
        threading.Event().wait()  # until the benchmark terminates this process
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
