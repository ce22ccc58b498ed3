"""``scanstream send``: C-STORE files and folders to a DICOM node (a modality simulator)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.commands.common import add_command


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``send``."""
    send = add_command(sub, "send", cmd_send, "C-STORE DICOM files or folders (a modality simulator)")
    send.add_argument("paths", nargs="+", type=Path)
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=11112)
    send.add_argument("--aet", default="SCANSTREAM", help="called AE title")
    send.add_argument("--calling-aet", default="SCANSTREAM_SCU")


def cmd_send(args: argparse.Namespace) -> int:
    """C-STORE files and folders to a DICOM node."""
    from engine.dicom.store_scu import SendError, send_files

    try:
        report = send_files(args.paths, args.host, args.port, args.aet, args.calling_aet)
    except SendError as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return 2
    print(f"sent {report.sent} instance(s), {report.bytes_sent / 1e6:.1f} MB; "
          f"failed {len(report.failed)}; skipped {len(report.skipped)} non-DICOM file(s)")
    for path, code in report.failed:
        print(f"  failed: {path} status={'none' if code is None else hex(code)}", file=sys.stderr)
    return 0 if not report.failed else 1
