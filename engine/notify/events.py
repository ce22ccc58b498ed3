"""Events as notifications carry them: one JSON-ready dict per finished job or final study.

The dict holds opaque keys, UIDs, the model, the findings summary and the
results' UIDs; never patient data (kinds that need demographics read them at
send time, see :class:`engine.notify.registry.StudyFacts`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from engine.ledger.store import JobRow, Ledger

_RESULT_TAGS = ["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality"]


@dataclass(frozen=True)
class Event:
    """One thing worth telling: its ledger id, trigger, study and (for job events) job and model."""

    event_id: str
    trigger: str
    study_uid: str
    job_id: str | None
    model: str | None
    body: dict[str, Any]

    def payload(self) -> str:
        """The body as compact JSON text (what the ledger keeps)."""
        return json.dumps(self.body, separators=(",", ":"), sort_keys=True, default=float)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def result_objects(result_dir: Path) -> list[dict[str, str]]:
    """The UIDs of the DICOM results in ``result_dir`` (unreadable files are skipped)."""
    objects = []
    for path in sorted(result_dir.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_RESULT_TAGS)
        except (OSError, InvalidDicomError, ValueError):
            continue
        objects.append({"file": path.name, "modality": str(ds.get("Modality", "")),
                        "sop_class_uid": str(ds.get("SOPClassUID", "")),
                        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                        "series_instance_uid": str(ds.get("SeriesInstanceUID", ""))})
    return objects


def _result_document(result_dir: Path) -> dict[str, Any]:
    try:
        document = json.loads((result_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def job_event(ledger: Ledger, job: JobRow, now: float) -> Event | None:
    """The event of a done, failed or dead-lettered job (None for any other state)."""
    if job.state not in ("done", "failed", "dead"):
        return None
    series = ledger.series_info(job.series_uid)
    body: dict[str, Any] = {
        "study_instance_uid": series.study_uid, "study_key": ledger.study_key(series.study_uid),
        "series_instance_uid": job.series_uid, "series_key": ledger.series_key(job.series_uid),
        "job": {"id": job.job_id, "model": job.model, "model_version": job.model_version, "state": job.state,
                "attempts": job.attempts},
        "time": _iso(job.finished or now),
    }
    if job.state == "done":
        folder = Path(job.result_dir or "")
        document = _result_document(folder)
        findings = document.get("findings") or []
        trigger = "findings" if findings else "no_findings"
        body.update(summary=str(document.get("summary", "")), findings=findings, findings_count=len(findings),
                    results=result_objects(folder))
    else:
        trigger = "failed"
        body.update(summary=f"job {job.state}", reason=job.reason or "", findings=[], findings_count=0,
                    results=[])
    body["trigger"] = trigger
    body["event_id"] = f"job:{job.job_id}:{job.state}:{job.attempts}"
    return Event(body["event_id"], trigger, series.study_uid, job.job_id, job.model, body)


def study_event(report: dict[str, Any], now: float) -> Event | None:
    """The ``study_final`` event of a study report (:func:`engine.ledger.study_report.study_report`) once final.

    Its id counts the study's jobs, so a study that gets more series later is
    final, and told, again.
    """
    if not report.get("final") or not report.get("jobs"):
        return None
    jobs = report["jobs"]
    states = {state: sum(1 for j in jobs if j["state"] == state) for state in ("done", "failed", "dead")}
    deliveries = [d for j in jobs for d in j["deliveries"]]
    body = {
        "trigger": "study_final", "event_id": f"study:{report['study_uid']}:final:{len(jobs)}",
        "study_instance_uid": report["study_uid"], "study_key": report["study_key"], "time": _iso(now),
        "summary": f"{states['done']} job(s) done, {states['failed'] + states['dead']} failed; "
                   f"{sum(1 for d in deliveries if d['state'] == 'sent')} of {len(deliveries)} deliveries sent",
        "jobs": [{"id": j["job_id"], "model": j["model"], "state": j["state"],
                  "series_instance_uid": j["series_uid"]} for j in jobs],
        "deliveries": {"sent": sum(1 for d in deliveries if d["state"] == "sent"),
                       "failed": sum(1 for d in deliveries if d["state"] == "failed")},
    }
    return Event(body["event_id"], "study_final", report["study_uid"], None, None, body)
