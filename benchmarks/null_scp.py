"""pynetdicom's floor: its storage SCP, negotiated like ScanStream's, storing nothing and answering 0x0000.

Run: ``python -m benchmarks.null_scp PORT`` (used by :mod:`benchmarks.receive_compare`).
It accepts the same presentation contexts and maximum PDU as
:class:`engine.receiver.scp.ReceiverSCP`, sets TCP_NODELAY on each connection,
takes each dataset's bytes from pynetdicom and drops them: what pynetdicom's
association and DIMSE handling cost per instance before any spool, fsync or
ledger (the receiver used pynetdicom's acceptor until it got its own).
"""

from __future__ import annotations

import argparse
import threading

from pynetdicom import AE, evt

from engine.receiver.scp import supported_contexts
from engine.receiver.statuses import StoreStatus
from engine.sender import tcp_nodelay

AE_TITLE = "NULLSCP"
MAX_PDU = 4 * 1024 * 1024  # ScanStream's default receiver.max_pdu_bytes


def drop_instance(event: evt.Event) -> int:
    """C-STORE: take the dataset's bytes as a handler storing them would, keep nothing."""
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
    for context in supported_contexts():
        ae.add_supported_context(context.abstract_syntax, context.transfer_syntax)
    handlers = [(evt.EVT_C_STORE, drop_instance), (evt.EVT_C_ECHO, lambda event: int(StoreStatus.SUCCESS)),
                (evt.EVT_CONN_OPEN, tcp_nodelay)]
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=handlers)
    try:
        threading.Event().wait()  # until the benchmark terminates this process
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
