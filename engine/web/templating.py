"""The console's Jinja2 templates (shipped in the package, autoescaped) and what every page is given."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from engine import __version__
from engine.web.timeline import seconds_text

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
NAVIGATION = (("/", "Dashboard"), ("/studies", "Studies"), ("/jobs", "Jobs"), ("/deliveries", "Deliveries"),
              ("/workers", "Workers"), ("/models", "Models"), ("/audit", "Audit log"))


def local_time(epoch: float | None) -> str:
    """Epoch seconds as the server's local date and time ("" for none)."""
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


TEMPLATES.env.filters["when"] = local_time
TEMPLATES.env.filters["seconds"] = lambda value: "" if value is None else seconds_text(float(value))


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page, with the signed-in user, their CSRF token and the navigation (the current page marked)."""
    session = getattr(request.state, "session", None)
    user = session.user if session is not None else None
    page = {"user": user, "csrf": session.csrf if session is not None else "", "navigation": NAVIGATION,
            "current": request.url.path, "version": __version__, **context}
    response = TEMPLATES.TemplateResponse(request, template, page, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"  # pages may show patient names: never kept by a cache
    return response
