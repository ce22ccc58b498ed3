"""``/api/deliveries``: result deliveries by state and destination, and Resend (operators) for failed ones."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from engine.web.api.jobs import ActionDone
from engine.web.api.paging import Page, Paging, paging
from engine.web.auth.deps import api_operator, api_user, client_address, console_of
from engine.web.auth.store import User
from engine.web.queries import DeliveryFilters, DeliveryListRow

router = APIRouter(prefix="/api", tags=["deliveries"])
DeliveryState = Literal["pending", "sent", "failed"]


@router.get("/deliveries", response_model=Page[DeliveryListRow])
def list_deliveries(request: Request, state: DeliveryState | Literal[""] = "",
                    destination: str = Query("", max_length=64), page: Paging = Depends(paging),
                    user: User = Depends(api_user)) -> Page[DeliveryListRow]:
    """Deliveries newest first, filtered by state and destination."""
    rows, total = console_of(request).reader.deliveries(DeliveryFilters(state, destination), page.offset, page.limit)
    return Page[DeliveryListRow](total=total, offset=page.offset, limit=page.limit, items=rows)


@router.post("/deliveries/{job_id}/{destination}/resend", response_model=ActionDone,
             responses={403: {"description": "a viewer, or a session without its CSRF token"},
                        404: {"description": "unknown delivery"}, 409: {"description": "not failed"}})
def resend_delivery(request: Request, job_id: str, destination: str,
                    user: User = Depends(api_operator)) -> ActionDone:
    """Send a failed delivery again from now with fresh attempts (operators only)."""
    console = console_of(request)
    rows = [row for row in console.ledger.deliveries([job_id]) if row.destination == destination]
    if not rows:
        raise HTTPException(404, "unknown delivery")
    if not console.resend_delivery(user, job_id, destination, client_address(request)):
        raise HTTPException(409, f"the delivery is {rows[0].state}: only failed deliveries are resent")
    return ActionDone(job_id=job_id, state="pending", destination=destination)
