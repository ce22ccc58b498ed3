"""The ASGI application: health, readiness and metrics always; the console (pages, API, docs) given a :class:`Console`.

Errors are answered in the caller's terms: JSON ``{"error": ...}`` under
``/api``, an HTML page elsewhere, a redirect to the sign-in page for a page
asked without a session. Every answer carries headers that keep it out of
frames and other sites' scripts (a strict Content-Security-Policy: the
console loads nothing from anywhere but itself).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import __version__
from engine.web import pages
from engine.web.api import deliveries, events, jobs, overview, studies
from engine.web.auth import routes as auth_routes
from engine.web.auth.deps import SignInRequired, api_user, page_user
from engine.web.auth.store import User
from engine.web.console import Console
from engine.web.health import Readiness, health_router
from engine.web.metrics import metrics_router
from engine.web.templating import render

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")  # Swagger UI starts inline


class SecurityHeaders:
    """Adds the security headers to every HTTP answer (pure ASGI, so event streams pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] == "/api/docs" else PAGE_CSP
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"same-origin"), (b"content-security-policy", csp.encode())]
                if https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/dicomweb/")) and request.url.path != "/api/docs"


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if _wants_json(request) or request.url.path in ("/healthz", "/readyz", "/metrics"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return render(request, "error.html", {"status": status, "message": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, _exc: SignInRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return _error(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'][1:]) or 'request'}: {error['msg']}"
                             for error in exc.errors())
        return _error(request, 400, problems)


def _add_docs(app: FastAPI) -> None:
    """OpenAPI at /api/openapi.json and Swagger UI at /api/docs, signed in, its assets served from the package."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_user: User = Depends(api_user)) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(_user: User = Depends(page_user)) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title="ScanStream API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")


def create_app(registry: CollectorRegistry, ready: Readiness, console: Console | None = None,
               signed_in_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The application; without ``console`` only /healthz, /readyz and /metrics (what probes and scrapers need).

    ``signed_in_routers`` (DICOMweb) join the console's routes; they need its users, so only with ``console``.
    """
    app = FastAPI(title="ScanStream", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  description="The operations console's API. Every route needs a signed-in user: a browser "
                              "session, or `Authorization: Bearer <token>` (`scanstream users token NAME`).")
    app.state.console = console
    app.state.stopping = threading.Event()  # set by the server as it stops: event streams end
    app.include_router(health_router(ready))
    app.include_router(metrics_router(registry))
    _add_error_handlers(app)
    if console is not None:
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
        _add_docs(app)
        app.include_router(auth_routes.router)
        for router in (studies.router, jobs.router, deliveries.router, overview.router, events.router,
                       pages.router, pages.actions, *signed_in_routers):
            app.include_router(router)
    app.add_middleware(SecurityHeaders)
    return app
