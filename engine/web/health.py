"""``/healthz`` (the process answers) and ``/readyz`` (every part healthy), open to probes without sign-in.

Readiness comes from a callable ``() -> list[str]``: the names of the parts
that are not healthy, empty when ready. ``/readyz`` answers 200 ``ready``, or
503 with one line per failing part.
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

Readiness = Callable[[], list[str]]


def health_router(ready: Readiness) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> PlainTextResponse:
        """200 while the process serves HTTP."""
        return PlainTextResponse("ok\n")

    @router.get("/readyz", response_class=PlainTextResponse, responses={503: {"description": "parts not ready"}})
    def readyz() -> PlainTextResponse:
        """200 ``ready`` when every part is healthy, else 503 naming each part that is not."""
        failing = ready()
        if not failing:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("".join(f"{part}\n" for part in failing), status_code=503)

    return router
