"""``/api/summary``, ``/api/workers``, ``/api/models``, ``/api/audit``: the dashboard, the fleet, the models, the trail."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from engine.web.audit_view import audit_page
from engine.web.auth.deps import api_user, console_of
from engine.web.auth.store import User
from engine.web.console import Console
from engine.web.models_view import why_unrouted
from engine.web.summary import dashboard

router = APIRouter(prefix="/api", tags=["overview"])


@router.get("/summary")
def summary(request: Request, user: User = Depends(api_user)) -> dict[str, Any]:
    """Received today, queue depth, in flight, failed and dead-lettered jobs, deliveries, latency per model."""
    return dashboard(console_of(request))


def worker_rows(console: Console) -> list[dict[str, Any]]:
    now = time.time()
    return [asdict(worker) | {"models": list(worker.models), "seen_s_ago": round(max(0.0, now - worker.last_seen), 1)}
            for worker in console.workers()]


@router.get("/workers")
def workers(request: Request, user: User = Depends(api_user)) -> list[dict[str, Any]]:
    """Connected workers: name, host, pid, models, jobs in flight, free slots, when last heard."""
    return worker_rows(console_of(request))


def unrouted_rows(console: Console) -> list[dict[str, Any]]:
    """The newest series no model took, each with every loaded model's reason."""
    specs = console.models.specs()
    return [{"series_key": row.series_key, "study_key": row.study_key, "completed_at": row.completed_at,
             "modality": row.info.modality, "body_part": row.info.body_part,
             "series_description": row.info.series_description, "calling_ae": row.info.calling_ae,
             "instances": row.info.instance_count, "reasons": why_unrouted(row.info, specs, console.models.enabled)}
            for row in console.reader.unrouted_series()]


@router.get("/models")
def models(request: Request, user: User = Depends(api_user)) -> dict[str, Any]:
    """Models (selector, version, outputs, backend and why) and the newest series none took, with why."""
    console = console_of(request)
    return {"models": console.models.as_json(), "routing_models": list(console.models.enabled),
            "unrouted": unrouted_rows(console)}


@router.get("/audit")
def audit(request: Request, event: str = Query("", max_length=64), offset: int = Query(0, ge=0),
          limit: int = Query(100, ge=1, le=500), user: User = Depends(api_user)) -> dict[str, Any]:
    """The audit log newest first (associations, refusals, sign-ins, console actions)."""
    items, more = audit_page(console_of(request).audit_path, offset, limit, event)
    return {"offset": offset, "limit": limit, "more": more, "items": items}
