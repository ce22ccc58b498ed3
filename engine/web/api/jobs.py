"""``/api/jobs``: jobs by state, model and reason, and Requeue (operators) for failed and dead-lettered ones."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel

from engine.web.api.paging import Page, Paging, paging
from engine.web.auth.deps import api_operator, api_user, client_address, console_of
from engine.web.auth.store import User
from engine.web.queries import JobFilters, JobListRow

router = APIRouter(prefix="/api", tags=["jobs"])
JobState = Literal["queued", "leased", "done", "failed", "dead"]


class ActionDone(BaseModel):
    """What an action changed."""

    job_id: str
    state: str
    destination: str | None = None


@router.get("/jobs", response_model=Page[JobListRow])
def list_jobs(request: Request, state: JobState | Literal[""] = "", model: str = Query("", max_length=64),
              reason: str = Query("", max_length=200, description="a part of the reason, any case"),
              page: Paging = Depends(paging), user: User = Depends(api_user)) -> Page[JobListRow]:
    """Jobs newest first, filtered by state, model and reason."""
    rows, total = console_of(request).reader.jobs(JobFilters(state, model, reason), page.offset, page.limit)
    return Page[JobListRow](total=total, offset=page.offset, limit=page.limit, items=rows)


@router.post("/jobs/{job_id}/requeue", response_model=ActionDone,
             responses={403: {"description": "a viewer, or a session without its CSRF token"},
                        404: {"description": "unknown job"}, 409: {"description": "not failed or dead-lettered"}})
def requeue_job(request: Request, job_id: str, user: User = Depends(api_operator)) -> ActionDone:
    """Queue a failed or dead-lettered job again with fresh attempts (operators only)."""
    console = console_of(request)
    job = console.ledger.job(job_id)
    if job is None:
        raise HTTPException(404, "unknown job")
    if not console.requeue_job(user, job_id, client_address(request)):
        raise HTTPException(409, f"job {job_id} is {job.state}: only failed or dead-lettered jobs are requeued")
    return ActionDone(job_id=job_id, state="queued")
