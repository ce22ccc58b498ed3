"""DICOMweb on the receiver's HTTP side: ``POST /dicomweb/studies[/{uid}]`` (STOW-RS), for operators.

The body is read up to ``max_body_bytes`` (413 beyond), split into parts
(400 when it is not a multipart/related body, 415 for another media type), and
each part stored by :class:`engine.receiver.stow.StowStore` off the event loop:
stored and fsynced before the answer, like C-STORE. Callers are console users
with the operator role (a bearer token; a session also needs its CSRF token).
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from engine.logs import get_logger
from engine.receiver.acse import AssociationInfo
from engine.receiver.parse import is_safe_uid
from engine.receiver.stow import StowBodyError, StowStore, split_parts, stow_response
from engine.web.auth.deps import api_operator, client_address
from engine.web.auth.store import User

log = get_logger(__name__)

DICOM_JSON = "application/dicom+json"


def stow_router(store: StowStore, max_body_bytes: int, disk_low: Callable[[], bool] = lambda: False) -> APIRouter:
    """The STOW-RS routes over ``store``; while ``disk_low()`` (the spool below ``storage.min_free_bytes``,
    where C-STORE associations are refused) requests get 503 with Retry-After, before the body is read."""
    router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

    async def _read(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise HTTPException(413, f"the body is over the cap of {max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise HTTPException(413, f"the body is over the cap of {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _stow(request: Request, user: User, study_uid: str | None) -> JSONResponse:
        if disk_low():
            raise HTTPException(503, "the spool's disk is below storage.min_free_bytes: try again later",
                                headers={"Retry-After": "60"})
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/related"):
            raise HTTPException(415, 'send multipart/related; type="application/dicom"')
        body = await _read(request)
        try:
            parts = split_parts(content_type, body)
        except StowBodyError as exc:
            raise HTTPException(400, str(exc)) from None
        peer = AssociationInfo(calling_ae=f"STOW:{user.name}"[:16], called_ae="DICOMWEB",
                               host=client_address(request), port=0)
        outcomes = await run_in_threadpool(
            lambda: [store.store_part(kind, data, peer, study_uid) for kind, data in parts])
        status, answer = stow_response(outcomes)
        log.info("stow.answered", status=status, parts=len(parts),
                 failed=sum(1 for o in outcomes if o.status != 0), user=user.name, address=peer.host)
        return JSONResponse(answer, status_code=status, media_type=DICOM_JSON)

    @router.post("/studies")
    async def stow_studies(request: Request, user: User = Depends(api_operator)) -> JSONResponse:
        """Store the instances of a multipart/related body (STOW-RS)."""
        return await _stow(request, user, None)

    @router.post("/studies/{study_uid}")
    async def stow_study(study_uid: str, request: Request, user: User = Depends(api_operator)) -> JSONResponse:
        """Store instances of one study; instances of another study are refused (0xA900)."""
        if not is_safe_uid(study_uid):
            raise HTTPException(400, "not a valid Study Instance UID")
        return await _stow(request, user, study_uid)

    return router
