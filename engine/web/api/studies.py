"""``/api/studies``: the study list with filters and paging, one study's report, a job's preview as PNG."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from engine.web.api.paging import Page, Paging, paging
from engine.web.auth.deps import api_user, console_of
from engine.web.auth.store import User
from engine.web.console import Console
from engine.web.previews import PREVIEW_FILE
from engine.web.queries import StudyFilters, StudyRow

router = APIRouter(prefix="/api", tags=["studies"])
MAX_STUDY_WAIT_S = 60.0
StudyState = Literal["receiving", "stored", "processing", "failed", "done"]


@dataclass
class StudyItem(StudyRow):
    """A line of the study list: the ledger's facts and, from the study's stored header, the patient's."""

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_description: str = ""


def study_items(console: Console, filters: StudyFilters, accession: str, page: Paging) -> Page[StudyItem]:
    """The page of studies the filters keep (accession numbers are read from headers, so filtered here)."""
    rows = console.reader.studies(filters)
    if accession:
        rows = [row for row in rows if console.headers.get(row.study_uid).accession_number == accession]
    items = [StudyItem(**asdict(row), **console.headers.get(row.study_uid).as_dict())
             for row in rows[page.offset:page.offset + page.limit]]
    return Page[StudyItem](total=len(rows), offset=page.offset, limit=page.limit, items=items)


@router.get("/studies", response_model=Page[StudyItem])
def list_studies(request: Request, received_from: date | None = Query(None, description="first receipt day "
                                                                                         "(YYYY-MM-DD, local)"),
                 received_to: date | None = Query(None, description="last receipt day (YYYY-MM-DD, local)"),
                 calling_ae: str = Query("", max_length=16), state: StudyState | Literal[""] = "",
                 modality: str = Query("", max_length=16), accession: str = Query("", max_length=16),
                 page: Paging = Depends(paging), user: User = Depends(api_user)) -> Page[StudyItem]:
    """Studies newest first, filtered by receipt date, calling AE, state, modality and accession number."""
    filters = StudyFilters(received_from, received_to, calling_ae, state, modality)
    return study_items(console_of(request), filters, accession, page)


def wait_seconds(request: Request) -> float:
    """The ``wait_s`` query parameter (0 when absent); 400 unless it is one number from 0 to 60."""
    values = request.query_params.getlist("wait_s") or ["0"]
    try:
        wait_s = float(values[0])
    except ValueError:
        wait_s = -1.0
    if len(values) != 1 or not 0.0 <= wait_s <= MAX_STUDY_WAIT_S:
        raise HTTPException(400, "wait_s: expected seconds from 0 to 60")
    return wait_s


def study_uid_of(console: Console, ref: str) -> str:
    """A study UID from a page's opaque key (``st_...``) or the UID itself."""
    return (console.reader.study_uid(ref) or "") if ref.startswith("st_") else ref


def full_report(console: Console, study_uid: str, wait_s: float = 0.0) -> dict[str, Any] | None:
    """The ledger's study report, plus header facts, series facts and each job's preview address."""
    report = console.study_report(study_uid, wait_s)
    if report is None:
        return None
    facts = console.reader.series_facts(study_uid)
    for series in report["series"]:
        series.update(facts.get(series["series_uid"], {}))
    for job in report["jobs"]:
        job["preview_url"] = f"/api/jobs/{job['job_id']}/preview.png" if PREVIEW_FILE in job["artifacts"] else None
    report["header"] = console.headers.get(study_uid).as_dict()
    report["previews"] = [{"job_id": job["job_id"], "model": job["model"], "url": job["preview_url"]}
                          for job in report["jobs"] if job["preview_url"]]
    return report


@router.get("/studies/{ref}", responses={404: {"description": "unknown study"},
                                         400: {"description": "wait_s out of range"}})
def get_study(request: Request, ref: str, wait_s: float = Depends(wait_seconds),
              user: User = Depends(api_user)) -> JSONResponse:
    """A study (by Study Instance UID or study key): series, jobs with stage timings, files, deliveries, previews.

    ``?wait_s=N`` (0-60) holds the answer until the study is final (every job done or
    failed, every delivery sent or failed) or N seconds passed: wait instead of polling.
    """
    console = console_of(request)
    report = full_report(console, study_uid_of(console, ref), wait_s)
    if report is None:
        raise HTTPException(404, "unknown study")
    return JSONResponse(report, headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/preview.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "no preview"}})
def job_preview(request: Request, job_id: str, user: User = Depends(api_user)) -> Response:
    """The job's preview (its Secondary Capture) rendered to PNG."""
    console = console_of(request)
    job = console.ledger.job(job_id)
    data = console.previews.png(job.result_dir if job is not None and job.state == "done" else None)
    if data is None:
        raise HTTPException(404, "this job has no preview")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})
