"""``scanstream verify``: report orphans between the ledger and the spool/results folders (exit 1 if any)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``verify``."""
    verify = add_command(sub, "verify", cmd_verify, "check that the ledger and the spool and results folders agree")
    verify.add_argument("--data-dir", type=Path)


def cmd_verify(args: argparse.Namespace) -> int:
    """Print every missing file and every orphan; 0 when ledger and files agree, else 1."""
    from engine.receiver.spool import Spool
    from engine.retention.verify import verify

    config = config_from_args(args)
    ledger = open_ledger(config)
    if ledger is None:
        return 1
    try:
        report = verify(ledger, Spool(config.storage.spool_dir), config.storage.results_dir)
    finally:
        ledger.close()
    for line in report.missing:
        print(f"missing: {line}")
    for line in report.orphans:
        print(f"orphan: {line}")
    verdict = "agree" if report.clean else f"disagree: {len(report.missing)} missing, {len(report.orphans)} orphan(s)"
    print(f"ledger and files {verdict} ({report.instances} instance(s), {report.result_folders} results folder(s))")
    return 0 if report.clean else 1
