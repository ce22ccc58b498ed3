"""``scanstream requeue JOB...``: failed, dead-lettered or abandoned jobs queued again, or a done job's failed deliveries.

A job leased by no connected worker (its lease ran out without renewal) counts as
abandoned; a job whose series' spool files are gone is refused with that reason,
since running it again cannot succeed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger
from engine.ledger.store import Ledger
from engine.receiver.spool import Spool


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``requeue``."""
    requeue = add_command(sub, "requeue", cmd_requeue,
                          "queue failed, dead-lettered or abandoned (lease expired) jobs again")
    requeue.add_argument("jobs", nargs="+", help="job ids, as `scanstream status` lists them")
    requeue.add_argument("--data-dir", type=Path)


def cmd_requeue(args: argparse.Namespace) -> int:
    """Queue failed or dead-lettered jobs again, or a done job's failed deliveries (picked up within seconds)."""
    config = config_from_args(args)
    ledger = open_ledger(config)
    if ledger is None:
        return 1
    missing, refused, jobs, deliveries = [], [], 0, 0
    spool = Spool(config.storage.spool_dir)
    try:
        for job in args.jobs:
            if (why := _cannot_run_again(ledger, spool, job)) is not None:
                refused.append(why)
                continue
            if ledger.requeue(job, time.time()):
                jobs += 1
                continue
            failed = [row for row in ledger.deliveries([job]) if row.state == "failed"]
            deliveries += sum(ledger.requeue_delivery(job, row.destination, time.time()) for row in failed)
            if not failed:
                missing.append(job)
    finally:
        ledger.close()
    for why in refused:
        print(why, file=sys.stderr)
    for job in missing:
        print(f"job {job} is not failed or dead-lettered and has no failed delivery (or does not exist)",
              file=sys.stderr)
    print(f"requeued {jobs} job(s) and {deliveries} failed deliver{'y' if deliveries == 1 else 'ies'}")
    return 0 if not missing and not refused else 1


def _cannot_run_again(ledger: Ledger, spool: Spool, job_id: str) -> str | None:
    """Why a job cannot be requeued (its series' spool files are gone, or a worker still holds it), or None."""
    job = ledger.job(job_id)
    if job is None:
        return None
    if job.state == "leased" and job.lease_expires is not None and job.lease_expires >= time.time():
        return (f"job {job_id} is leased to worker {job.worker} (lease renewed while it is connected); "
                "it is taken back by itself if that worker goes away")
    if job.state not in ("failed", "dead"):
        return None
    instances = ledger.series_instances(job.series_uid)
    gone = sum(not spool.has(row.spool_name) for row in instances)
    if gone or not instances:
        return (f"job {job_id} cannot run again: {gone} of {len(instances)} spool file(s) of its series are gone; "
                "send the series again to run it")
    return None
