"""``scanstream status``: studies, queue depth, in-flight and failed jobs, failed deliveries and notifications,
latency."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.commands.common import add_command, config_from_args, open_ledger
from engine.ledger.store import DeliveryRow, JobRow, Ledger, NotificationRow
from engine.receiver.retention import RetentionState, read_state


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


def retention_line(state: RetentionState) -> str:
    """The last retention pass in one line, saying why new associations are refused when they are."""
    quota = "no quota" if state.quota_bytes is None else f"quota {state.quota_bytes} bytes"
    line = (f"{'retention':>22}: {state.used_bytes} bytes used, {quota}, {state.recycled_total} recycled, "
            f"{state.expired_total} expired")
    if state.quota_full:
        line += ("\n  REFUSING new associations: the data folder is over retention.quota_bytes and only unfinished "
                 "work (open series, pending jobs or deliveries) is left to remove")
    return line


def cmd_status(args: argparse.Namespace) -> int:
    """Studies, series, queue depth, in-flight and failed jobs, from the ledger."""
    config = config_from_args(args)
    ledger = open_ledger(config)
    if ledger is None:
        return 1
    try:
        report = status_report(ledger)
    finally:
        ledger.close()
    counts, failed, undelivered, latency = report.counts, report.failed, report.undelivered, report.latency
    unnotified = report.unnotified
    retention = read_state(config.storage.data_dir)
    if args.json:
        print(json.dumps({"counts": counts, "retention": None if retention is None else asdict(retention), "failed": [
            {"job": j.job_id, "model": j.model, "state": j.state, "reason": j.reason} for j in failed],
            "failed_deliveries": [{"job": d.job_id, "destination": d.destination, "attempts": d.attempts,
                                   "reason": d.reason} for d in undelivered],
            "failed_notifications": [{"target": n.notifier, "trigger": n.trigger, "job": n.job_id,
                                      "attempts": n.attempts, "reason": n.reason} for n in unnotified],
            "latency_s": latency}, indent=2))
        return 0
    for key, value in counts.items():
        print(f"{key:>22}: {value}")
    if retention is not None:
        print(retention_line(retention))
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
