"""``scanstream status``: studies, queue depth, in-flight and failed jobs, failed deliveries and notifications,
latency."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger
from engine.ledger.store import DeliveryRow, JobRow, Ledger, NotificationRow


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``status``."""
    status = add_command(sub, "status", cmd_status,
                         "counts of studies, series and jobs by state; failed jobs and deliveries; latency")
    status.add_argument("--data-dir", type=Path)
    status.add_argument("--json", action="store_true")


@dataclass(frozen=True)
class StatusReport:
    """What ``scanstream status`` shows, read from the ledger."""

    counts: dict[str, int]
    failed: list[JobRow]
    undelivered: list[DeliveryRow]
    unnotified: list[NotificationRow]
    latency: dict[str, dict[str, float]]


def status_report(ledger: Ledger) -> StatusReport:
    """Counts, failed and dead-lettered jobs, failed deliveries and notifications, and latency percentiles of
    done jobs."""
    from engine.ledger.latency import percentiles

    return StatusReport(ledger.status_counts(), ledger.list_jobs("failed") + ledger.list_jobs("dead"),
                        ledger.deliveries(state="failed"), ledger.notifications(state="failed"),
                        percentiles(ledger.timelines()))


def cmd_status(args: argparse.Namespace) -> int:
    """Studies, series, queue depth, in-flight and failed jobs, from the ledger."""
    ledger = open_ledger(config_from_args(args))
    if ledger is None:
        return 1
    try:
        report = status_report(ledger)
    finally:
        ledger.close()
    counts, failed, undelivered, latency = report.counts, report.failed, report.undelivered, report.latency
    unnotified = report.unnotified
    if args.json:
        print(json.dumps({"counts": counts, "failed": [
            {"job": j.job_id, "model": j.model, "state": j.state, "reason": j.reason} for j in failed],
            "failed_deliveries": [{"job": d.job_id, "destination": d.destination, "attempts": d.attempts,
                                   "reason": d.reason} for d in undelivered],
            "failed_notifications": [{"target": n.notifier, "trigger": n.trigger, "job": n.job_id,
                                      "attempts": n.attempts, "reason": n.reason} for n in unnotified],
            "latency_s": latency}, indent=2))
        return 0
    for key, value in counts.items():
        print(f"{key:>22}: {value}")
    for job in failed:
        print(f"  {job.state}: job {job.job_id} model {job.model}: {job.reason}")
    for row in undelivered:
        print(f"  delivery failed: job {row.job_id} to {row.destination} after {row.attempts} attempt(s): {row.reason}")
    for note in unnotified:
        what = f"job {note.job_id}" if note.job_id else f"study {note.event_id.split(':')[1]}"
        print(f"  notification failed: {note.trigger} of {what} to {note.notifier} after {note.attempts} attempt(s):"
              f" {note.reason}")
    if latency:
        print("latency of done jobs (seconds):")
        print(f"{'stage':>14} {'count':>6} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
        for stage, row in latency.items():
            print(f"{stage:>14} {row['count']:>6} {row['p50']:>9.4f} {row['p95']:>9.4f} {row['p99']:>9.4f} "
                  f"{row['max']:>9.4f}")
    return 0
