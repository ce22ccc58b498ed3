"""Who is asking, as FastAPI dependencies: a bearer token (API clients) or a session cookie (browsers).

- Every console page and ``/api`` route depends on :func:`api_user` or
  :func:`page_user`: no user, no answer (401 for the API, a redirect to the
  sign-in page for a page).
- Actions depend on :func:`api_operator` or :func:`page_operator`: a viewer gets 403; a browser
  session must send its CSRF token back (``X-CSRF-Token`` header, or the
  ``csrf_token`` form field), else 403. A bearer token carries no ambient
  authority a third-party page could borrow, so it needs no CSRF token.
"""

from __future__ import annotations

import hmac
import ipaddress
import time

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.web.auth.store import Session, User
from engine.web.console import Console

SESSION_COOKIE = "scanstream_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


class SignInRequired(Exception):
    """A page was asked for without a session: answered with a redirect to the sign-in page."""


def console_of(request: Request) -> Console:
    return request.app.state.console


def client_address(request: Request) -> str:
    """The client's address (a trusted proxy's X-Forwarded-For already applied by uvicorn)."""
    return request.client.host if request.client else ""


def is_loopback(address: str) -> bool:
    """Whether an address (or ``localhost``) is this host's own."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def session_of(request: Request) -> Session | None:
    """The live session of the request's cookie (cached on the request), or None."""
    if hasattr(request.state, "session"):
        return request.state.session
    cookie = request.cookies.get(SESSION_COOKIE)
    session = None
    if cookie:
        settings = console_of(request).settings
        session = console_of(request).access.session(cookie, time.time(), settings.session_idle_s,
                                                     settings.session_max_s)
    request.state.session = session
    return session


def user_of(request: Request) -> User | None:
    """A bearer token's user, else the session's, else None."""
    token = _bearer(request)
    if token is not None:
        return console_of(request).access.user_for_token(token)
    session = session_of(request)
    return None if session is None else session.user


_BEARER = HTTPBearer(auto_error=False, description="an API token from `scanstream users add` or `users token`")


def api_user(request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> User:
    """Signed in, or 401 (with the header that tells clients a bearer token is expected).

    ``_credentials`` declares the bearer scheme in the OpenAPI document (the docs' Authorize button);
    the token itself is read by :func:`user_of`, which also takes a session cookie.
    """
    user = user_of(request)
    if user is None:
        raise HTTPException(401, "sign in, or send an API token (Authorization: Bearer ...)",
                            headers={"WWW-Authenticate": 'Bearer realm="scanstream"'})
    return user


def page_user(request: Request) -> User:
    """A browser session, or off to the sign-in page (and back here afterwards)."""
    session = session_of(request)
    if session is None:
        raise SignInRequired()
    return session.user


def csrf_matches(request: Request, sent: str | None) -> bool:
    """Whether ``sent`` is the session's CSRF token (always true for bearer-token requests)."""
    if _bearer(request) is not None:
        return True
    session = session_of(request)
    return session is not None and sent is not None and hmac.compare_digest(session.csrf.encode(), sent.encode())


async def _operator(request: Request, user: User) -> User:
    """``user`` when an operator who sent the session's CSRF token back (header or form field); else 403."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = str((await request.form()).get(CSRF_FIELD, "")) or None
    if not csrf_matches(request, sent):
        raise HTTPException(403, "the form is stale or was not sent by this console (CSRF token missing or wrong): "
                                 "reload the page and try again")
    if not user.operator:
        raise HTTPException(403, f"user {user.name!r} is a viewer: requeue and resend need the operator role")
    return user


async def api_operator(request: Request, user: User = Depends(api_user)) -> User:
    """An API action: signed in (401 otherwise), an operator, CSRF-checked for sessions (403 otherwise)."""
    return await _operator(request, user)


async def page_operator(request: Request, user: User = Depends(page_user)) -> User:
    """A page's form action: as :func:`api_operator`, with a redirect to sign in instead of 401."""
    return await _operator(request, user)
