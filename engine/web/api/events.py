"""``/api/events``: server-sent events telling open pages that the ledger changed, so they refresh what they show.

Each stream keeps one read-only connection on the ledger and reads SQLite's
``data_version`` (constant-time; it moves whenever the receiver commits) every
:data:`CHECK_S`; on a change it sends ``event: change``. The first event,
``ready``, is sent once the stream's baseline is read: a page fetches itself
again on it, which covers whatever changed between the page being rendered and
the stream starting (a job that finishes right after a Requeue redirect would
otherwise never show without a reload). Pages fetch their live
parts again at most about once a second however busy the receiver is. A
comment line every :data:`KEEPALIVE_S` keeps proxies from closing an idle
stream. Streams end when the console stops.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from engine.web.auth.deps import api_user, console_of
from engine.web.auth.store import User
from engine.web.queries import LedgerReader

router = APIRouter(prefix="/api", tags=["events"])
CHECK_S = 0.5
KEEPALIVE_S = 15.0


async def ledger_changes(reader: LedgerReader, stopping: threading.Event) -> AsyncIterator[str]:
    """A ``ready`` event, then ``change`` events (data: the ledger's data version) until ``stopping`` is set."""
    with reader.watch() as version:
        last = version()
        yield f"retry: 3000\nevent: ready\ndata: {last}\n\n"
        quiet = 0.0
        while not stopping.is_set():
            await asyncio.sleep(CHECK_S)
            now = version()
            if now != last:
                last, quiet = now, 0.0
                yield f"event: change\ndata: {now}\n\n"
            else:
                quiet += CHECK_S
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
def events(request: Request, user: User = Depends(api_user)) -> StreamingResponse:
    """A stream of ``change`` events, one whenever the ledger changed (a study arrived, a job moved, ...)."""
    return StreamingResponse(ledger_changes(console_of(request).reader, request.app.state.stopping),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
