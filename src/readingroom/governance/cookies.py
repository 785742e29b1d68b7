"""Session cookies and CSRF on the wire (the HTTP side of ``sessions.py``).

A cookie is an ambient credential: the browser attaches it to requests that
other sites trigger. Three defences, layered:

* ``SameSite=Lax``: browsers do not send the cookie on cross-site POSTs;
* a synchronizer token: every unsafe request (POST, PUT, PATCH, DELETE)
  authenticated by the cookie must repeat the session's CSRF token in the
  ``X-CSRF-Token`` header or a ``csrf_token`` form field, which another site
  cannot read; without it: 403 and nothing changes;
* ``HttpOnly``: scripts cannot read the cookie, so an injected script cannot
  carry the session elsewhere.

Requests with an ``Authorization`` header (Bearer, Basic) are not ambient and
need no CSRF token. Sign-in forms have no session yet; they are protected by
a double-submit cookie (``rr_login_csrf``): the form repeats a random value
the server also set as a cookie, which a cross-site form cannot know.
"""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from readingroom.config import Settings
from readingroom.governance import sessions
from readingroom.governance.sessions import ActiveSession
from readingroom.runtime import Runtime

SESSION_COOKIE = "rr_session"
LOGIN_CSRF_COOKIE = "rr_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

SESSION_ENDED = "your session has ended (signed out, expired or unused for too long); sign in again"
CSRF_REFUSED = ("missing or wrong CSRF token: a request authenticated by the session cookie must send the "
                "X-CSRF-Token header (or csrf_token form field) given by GET /api/v1/auth/session")
MFA_VERIFY = "second factor required: verify a one-time code first (POST /api/v1/auth/totp/verify)"
MFA_ENROLL = ("your role requires a second factor: enrol one first (POST /api/v1/auth/totp/enroll, then "
              "/api/v1/auth/totp/confirm)")


def client_address(request: Request) -> str:
    """The caller's address (audit source, rate-limit key)."""
    return request.client.host if request.client else ""


def set_session_cookie(response: Response, secret: str, settings: Settings) -> None:
    """Give the browser its session secret: HttpOnly, SameSite=Lax, Path=/, Secure unless configured off."""
    response.set_cookie(SESSION_COOKIE, secret, max_age=int(settings.session_hours * 3600), path="/",
                        httponly=True, samesite="lax", secure=settings.session_cookie_secure)


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=settings.session_cookie_secure)


async def submitted_csrf(request: Request) -> str:
    """The CSRF token a request carries: the header, else the form field of a form post."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").lower().startswith(_FORM_TYPES):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and secrets.compare_digest(a.encode(), b.encode())


async def session_for_request(request: Request, rt: Runtime, *, allow_pending: bool) -> ActiveSession:
    """The live session of the request's cookie, with CSRF checked for unsafe methods (else 401/403).

    ``allow_pending``: a session that still owes its second factor is let
    through (the TOTP and sign-out routes only).
    """
    secret = request.cookies.get(SESSION_COOKIE)
    active = sessions.cached_session(secret) or await run_in_threadpool(sessions.resolve_session, rt, secret)
    if active is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=SESSION_ENDED)
    if request.method in UNSAFE_METHODS and not _same(await submitted_csrf(request), active.csrf_token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=CSRF_REFUSED)
    if not active.mfa_passed and not allow_pending:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=MFA_VERIFY if active.mfa_state == "verify" else MFA_ENROLL)
    request.state.auth_session = active
    return active


def login_csrf_value(request: Request) -> str:
    """The double-submit value for a sign-in form: the browser's current one, or a new random one."""
    value = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    return value if 20 <= len(value) <= 128 else secrets.token_urlsafe(32)


def set_login_csrf_cookie(response: Response, value: str, settings: Settings) -> None:
    """(Re)set the double-submit cookie; SameSite=Strict, the form is only ever posted from this site."""
    response.set_cookie(LOGIN_CSRF_COOKIE, value, max_age=2 * 3600, path="/", httponly=True, samesite="strict",
                        secure=settings.session_cookie_secure)


def login_csrf_ok(request: Request, submitted: str) -> bool:
    """Whether a sign-in form repeats the value of its double-submit cookie."""
    return _same(request.cookies.get(LOGIN_CSRF_COOKIE, ""), submitted)
