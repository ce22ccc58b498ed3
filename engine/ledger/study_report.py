"""A study as the API shows it: its series, its jobs with their stage timings and files, their deliveries."""

from __future__ import annotations

import os
from typing import Any

from engine.ledger.store import FINAL_JOB_STATES, Ledger
from engine.receiver.parse import is_safe_uid


def study_report(ledger: Ledger, study_uid: str) -> dict[str, Any] | None:
    """The study's report (``GET /api/studies/<uid>``), or None for an unknown or unsafe UID.

    ``artifacts`` names the files a done job filed (empty once retention removed them).
    ``final`` is true once every series is complete, every job is done, failed or
    dead-lettered and every delivery sent or failed: nothing more will happen
    without new instances.
    """
    if not is_safe_uid(study_uid):
        return None
    series = ledger.study_series(study_uid)
    if not series:
        return None
    jobs = ledger.study_jobs(study_uid)
    timelines = {t.job_id: t for t in ledger.timelines([j.job_id for j in jobs if j.state == "done"])}
    deliveries: dict[str, list[dict[str, Any]]] = {}
    for row in ledger.deliveries([j.job_id for j in jobs]):
        deliveries.setdefault(row.job_id, []).append(
            {"destination": row.destination, "state": row.state, "attempts": row.attempts, "reason": row.reason,
             "warnings": row.warnings, "finished": row.finished})
    return {
        "study_uid": study_uid,
        "study_key": ledger.study_key(study_uid),
        "series": [{"series_uid": s.series_uid, "series_key": s.series_key, "state": s.state,
                    "revision": s.revision, "instances": s.instance_count, "expected": s.expected_count,
                    "completion": s.completion_reason} for s in series],
        "jobs": [{"job_id": j.job_id, "series_uid": j.series_uid, "series_revision": j.series_revision,
                  "model": j.model, "state": j.state, "attempts": j.attempts, "reason": j.reason,
                  "created": j.created, "finished": j.finished,
                  "stages_s": timelines[j.job_id].stage_seconds() if j.job_id in timelines else {},
                  "artifacts": _artifact_names(j.result_dir) if j.state == "done" else [],
                  "deliveries": deliveries.get(j.job_id, [])}
                 for j in jobs],
        "final": all(s.state == "complete" for s in series) and all(j.state in FINAL_JOB_STATES for j in jobs)
        and all(d["state"] != "pending" for rows in deliveries.values() for d in rows),
    }


def _artifact_names(result_dir: str | None) -> list[str]:
    """The files in a job's result folder, sorted; none when there is no folder (any more)."""
    if not result_dir:
        return []
    try:
        return sorted(entry.name for entry in os.scandir(result_dir) if entry.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []
