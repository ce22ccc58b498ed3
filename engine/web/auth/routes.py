"""Signing in and out of the console.

The sign-in form is itself CSRF-protected (a random value in a cookie and in
the form must match, so no other site can sign a browser in as someone else).
Session cookies are ``Secure``, ``HttpOnly`` and ``SameSite=Strict``. Passwords
travel only over HTTPS, or over plain HTTP from this host itself (loopback:
nothing on the network to read them); from anywhere else over plain HTTP the
sign-in is refused with a page saying how to turn TLS on. Every sign-in,
failure, lockout and sign-out is written to the audit log.
"""

from __future__ import annotations

import hmac
import secrets
import time

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.logs import get_logger
from engine.web.auth.deps import (
    SESSION_COOKIE,
    client_address,
    console_of,
    csrf_matches,
    is_loopback,
    page_user,
    session_of,
)
from engine.web.auth.store import User
from engine.web.templating import render

log = get_logger(__name__)
router = APIRouter(include_in_schema=False)
LOGIN_COOKIE = "scanstream_login"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this console only (no other host, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target \
            or not target.isprintable():
        return "/"
    return target


def _set_cookie(response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def _plain_http_from_network(request: Request) -> bool:
    return request.url.scheme != "https" and not is_loopback(client_address(request))


def _login_page(request: Request, next_path: str, message: str = "", status_code: int = 200,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"login_csrf": token, "next": next_path, "message": message,
                                              "plain_http": _plain_http_from_network(request)},
                      status_code=status_code)
    _set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002 - the query parameter's name
    """The sign-in form (already signed in: straight on)."""
    if session_of(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, safe_next(next))


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, username: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
          next: str = Form("/")) -> Response:  # noqa: A002
    """Check the password (throttled), open a session and go on; refusals say why without saying which part."""
    console, address, target = console_of(request), client_address(request), safe_next(next)
    if _plain_http_from_network(request):  # first: a browser there never sends the Secure form cookie back
        console.record("console-login-refused", username[:64], address, reason="plain HTTP from the network")
        return _login_page(request, target, "Signing in over plain HTTP is only allowed from this host.", 403)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
        return _login_page(request, target, "The form had expired: please sign in again.", 403)
    now = time.time()
    keys = (f"user:{username.lower()[:64]}", f"address:{address}")
    wait = console.throttle.retry_after(keys, now)
    if wait > 0:
        console.record("console-login-throttled", username[:64], address, retry_after_s=round(wait))
        return _login_page(request, target, f"Too many failed sign-ins: try again in {int(wait) + 1} s.", 429,
                           {"Retry-After": str(int(wait) + 1)})
    user = console.access.check_password(username, password)
    if user is None:
        console.throttle.failed(keys, now)
        console.record("console-login-failed", username[:64], address)
        log.warning("console.login_failed", address=address)
        return _login_page(request, target, "Wrong user name or password.", 401)
    console.throttle.succeeded(keys[0])
    return _signed_in(request, user, target)


def _signed_in(request: Request, user: User, target: str) -> Response:
    console, now = console_of(request), time.time()
    console.access.expire_sessions(now, console.settings.session_idle_s, console.settings.session_max_s)
    session_id, _ = console.access.open_session(user, now)
    console.record("console-login", user.name, client_address(request), role=user.role)
    log.info("console.login", user=user.name, role=user.role)
    response = RedirectResponse(target, status_code=303)
    _set_cookie(response, SESSION_COOKIE, session_id, max_age=int(console.settings.session_max_s))
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form(""), user: User = Depends(page_user)) -> Response:
    """End the session (CSRF-checked: no other site can sign a user out either)."""
    if not csrf_matches(request, csrf_token):
        return RedirectResponse("/", status_code=303)
    console = console_of(request)
    console.access.close_session(request.cookies.get(SESSION_COOKIE, ""))
    console.record("console-logout", user.name, client_address(request))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response

