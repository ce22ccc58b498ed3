"""The console's pages (server-rendered; ``static/console.js`` refreshes their live parts on ledger changes).

Pages link to studies by their opaque keys, never by UID, and put no patient
data in any URL. Forms that act (requeue, resend) post back here with the
session's CSRF token and come back to the page they were sent from.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.web.api.overview import unrouted_rows, worker_rows
from engine.web.api.paging import Paging
from engine.web.api.studies import full_report, study_items
from engine.web.audit_view import audit_page
from engine.web.auth.deps import client_address, console_of, page_operator, page_user
from engine.web.auth.routes import safe_next
from engine.web.auth.store import User
from engine.web.queries import DeliveryFilters, JobFilters, StudyFilters, STUDY_STATES
from engine.web.summary import dashboard
from engine.web.templating import render
from engine.web.timeline import timeline_svg

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_user)])
actions = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        raise HTTPException(400, f"{text!r}: expected a date as YYYY-MM-DD") from None


@router.get("/", response_class=HTMLResponse)
def dashboard_page(request: Request) -> HTMLResponse:
    return render(request, "dashboard.html", {"summary": dashboard(console_of(request))})


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, received_from: str = "", received_to: str = "", calling_ae: str = "",
                 state: str = "", modality: str = "", accession: str = "",
                 offset: int = Query(0, ge=0)) -> HTMLResponse:
    if state and state not in STUDY_STATES:
        raise HTTPException(400, f"state {state!r}: expected one of {', '.join(STUDY_STATES)}")
    filters = StudyFilters(_day(received_from), _day(received_to), calling_ae.strip(), state, modality.strip())
    page = study_items(console_of(request), filters, accession.strip(), Paging(offset, PAGE_SIZE))
    form = {"received_from": received_from, "received_to": received_to, "calling_ae": calling_ae, "state": state,
            "modality": modality, "accession": accession}
    return render(request, "studies.html", {"page": page, "form": form, "states": STUDY_STATES})


def findings_of(result_dir: str | None) -> dict[str, Any] | None:
    """The summary, findings and class probabilities of a done job's ``result.json`` (None without one)."""
    if not result_dir:
        return None
    try:
        document = json.loads((Path(result_dir) / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return {"summary": document.get("summary", ""), "findings": document.get("findings", []),
            "class_probabilities": document.get("class_probabilities", {})}


@router.get("/studies/{study_key}", response_class=HTMLResponse)
def study_page(request: Request, study_key: str) -> HTMLResponse:
    console = console_of(request)
    study_uid = console.reader.study_uid(study_key) if study_key.startswith("st_") else None
    report = full_report(console, study_uid) if study_uid else None
    if report is None:
        raise HTTPException(404, "unknown study")
    for job in report["jobs"]:
        row = console.ledger.job(job["job_id"])
        job["result"] = findings_of(row.result_dir if row is not None and job["state"] == "done" else None)
        job["timeline"] = timeline_svg(job["stages_s"], f"timeline-{job['job_id']}",
                                       f"Stage timeline of the {job['model']} job")
    series_keys = {series["series_uid"]: series["series_key"] for series in report["series"]}
    return render(request, "study.html", {"report": report, "series_keys": series_keys})


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, state: str = "", model: str = "", reason: str = "",
              offset: int = Query(0, ge=0)) -> HTMLResponse:
    reader = console_of(request).reader
    attention = [row for wanted in ("failed", "dead") for row in reader.jobs(JobFilters(wanted), 0, PAGE_SIZE)[0]]
    rows, total = reader.jobs(JobFilters(state, model.strip(), reason.strip()), offset, PAGE_SIZE)
    return render(request, "jobs.html", {"attention": attention, "rows": rows, "total": total, "offset": offset,
                                         "page_size": PAGE_SIZE,
                                         "form": {"state": state, "model": model, "reason": reason}})


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries_page(request: Request, state: str = "", destination: str = "",
                    offset: int = Query(0, ge=0)) -> HTMLResponse:
    reader = console_of(request).reader
    failed, _ = reader.deliveries(DeliveryFilters("failed"), 0, PAGE_SIZE)
    rows, total = reader.deliveries(DeliveryFilters(state, destination.strip()), offset, PAGE_SIZE)
    return render(request, "deliveries.html", {"failed": failed, "rows": rows, "total": total, "offset": offset,
                                               "page_size": PAGE_SIZE,
                                               "form": {"state": state, "destination": destination}})


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> HTMLResponse:
    return render(request, "workers.html", {"workers": worker_rows(console_of(request))})


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    console = console_of(request)
    return render(request, "models.html", {"models": console.models.views(), "enabled": console.models.enabled,
                                           "unrouted": unrouted_rows(console)})


@router.get("/audit", response_class=HTMLResponse)
def audit_log_page(request: Request, event: str = "", offset: int = Query(0, ge=0)) -> HTMLResponse:
    entries, more = audit_page(console_of(request).audit_path, offset, PAGE_SIZE * 2, event.strip())
    return render(request, "audit.html", {"entries": entries, "more": more, "offset": offset,
                                          "page_size": PAGE_SIZE * 2, "event": event})


def _back(next_path: str) -> RedirectResponse:
    return RedirectResponse(safe_next(next_path), status_code=303)


@actions.post("/jobs/{job_id}/requeue")
def requeue_form(request: Request, job_id: str, next: str = Form("/jobs"),  # noqa: A002 - the form field
                 user: User = Depends(page_operator)) -> Response:
    """The Requeue button: queue the job again, then back to the page it was pressed on."""
    console = console_of(request)
    if console.ledger.job(job_id) is None:
        raise HTTPException(404, "unknown job")
    if not console.requeue_job(user, job_id, client_address(request)):
        raise HTTPException(409, "only failed or dead-lettered jobs can be requeued (it may have been already)")
    return _back(next)


@actions.post("/deliveries/{job_id}/{destination}/resend")
def resend_form(request: Request, job_id: str, destination: str, next: str = Form("/deliveries"),  # noqa: A002
                user: User = Depends(page_operator)) -> Response:
    """The Resend button: send the failed delivery again, then back to the page it was pressed on."""
    console = console_of(request)
    if not any(row.destination == destination for row in console.ledger.deliveries([job_id])):
        raise HTTPException(404, "unknown delivery")
    if not console.resend_delivery(user, job_id, destination, client_address(request)):
        raise HTTPException(409, "only failed deliveries can be resent (it may have been already)")
    return _back(next)
