"""``scanstream requeue JOB...``: failed or dead-lettered jobs queued again, or a done job's failed deliveries."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``requeue``."""
    requeue = add_command(sub, "requeue", cmd_requeue, "queue failed or dead-lettered jobs again")
    requeue.add_argument("jobs", nargs="+", help="job ids, as `scanstream status` lists them")
    requeue.add_argument("--data-dir", type=Path)


def cmd_requeue(args: argparse.Namespace) -> int:
    """Queue failed or dead-lettered jobs again, or a done job's failed deliveries (picked up within seconds)."""
    ledger = open_ledger(config_from_args(args))
    if ledger is None:
        return 1
    missing, jobs, deliveries = [], 0, 0
    try:
        for job in args.jobs:
            if ledger.requeue(job, time.time()):
                jobs += 1
                continue
            failed = [row for row in ledger.deliveries([job]) if row.state == "failed"]
            deliveries += sum(ledger.requeue_delivery(job, row.destination, time.time()) for row in failed)
            if not failed:
                missing.append(job)
    finally:
        ledger.close()
    for job in missing:
        print(f"job {job} is not failed or dead-lettered and has no failed delivery (or does not exist)",
              file=sys.stderr)
    print(f"requeued {jobs} job(s) and {deliveries} failed deliver{'y' if deliveries == 1 else 'ies'}")
    return 0 if not missing else 1
