"""Sign-in and account pages: plain HTML forms that work without JavaScript.

Every form posts with a CSRF token: the sign-in form a double-submit value
(there is no session yet), the account forms the session's synchronizer
token, checked by the same code as the JSON API. After a change the browser
is redirected (POST-redirect-GET) to a page that says what happened, using a
fixed message chosen by a code, never text taken from the URL.
"""

from __future__ import annotations

from typing import Annotated, Any

import segno
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from readingroom.governance import accounts, cookies, sessions, signin, totp
from readingroom.governance.api import RuntimeDep
from readingroom.governance.auth_api import change_password, confirm, disable
from readingroom.governance.login import LoginRefused
from readingroom.governance.models import User
from readingroom.governance.oidc_api import configured as oidc_configured
from readingroom.governance.sessions import ActiveSession
from readingroom.runtime import Runtime
from readingroom.web.templating import error_page, render, safe_next

router = APIRouter(include_in_schema=False)

DONE_MESSAGES = {
    "verified": "Second factor verified.",
    "totp-enabled": "Your authenticator app is set up; you will be asked for a code at every sign-in. "
                    "Your other sessions were signed out.",
    "totp-disabled": "The second factor was removed.",
    "signed-out-others": "Your other sessions were signed out.",
    "password-changed": "Your password was changed; your other sessions were signed out.",
}
FieldStr = Annotated[str, Form(max_length=1024)]
CodeStr = Annotated[str, Form(max_length=16)]


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _page_session(request: Request, rt: Runtime) -> ActiveSession | None:
    """The live session of a page request (GET: no CSRF to check), or None."""
    secret = request.cookies.get(cookies.SESSION_COOKIE)
    if not secret:
        return None
    return sessions.cached_session(secret) or await run_in_threadpool(sessions.resolve_session, rt, secret)


def _login_page(request: Request, rt: Runtime, *, next_url: str, error: str = "", status_code: int = 200,
                username: str = "", headers: dict[str, str] | None = None) -> Response:
    token = cookies.login_csrf_value(request)
    response = render(request, "login.html", {"next": next_url, "error": error, "username": username,
                                              "oidc": oidc_configured(rt), "csrf_token": token},
                      status_code=status_code)
    cookies.set_login_csrf_cookie(response, token, rt.settings)
    if headers:
        response.headers.update(headers)
    return response


@router.get("/login", response_class=Response)
async def login_page(request: Request, rt: RuntimeDep, next: str = "/account") -> Response:
    """The sign-in form (username, password, optional code; single sign-on button when configured)."""
    active = await _page_session(request, rt)
    if active is not None and active.mfa_passed:
        return _see_other(safe_next(next))
    return _login_page(request, rt, next_url=safe_next(next))


@router.post("/login", response_class=Response)
async def login_submit(request: Request, rt: RuntimeDep, username: FieldStr = "", password: FieldStr = "",
                       otp: CodeStr = "", csrf_token: FieldStr = "", next: FieldStr = "/account") -> Response:
    """Check the form's double-submit token, then sign in exactly like ``POST /api/v1/auth/login``."""
    next_url = safe_next(next)
    if not cookies.login_csrf_ok(request, csrf_token):
        return _login_page(request, rt, next_url=next_url, status_code=403, username=username,
                           error="The form expired or was not sent from this site. Please sign in again.")
    if not username or not password:
        return _login_page(request, rt, next_url=next_url, status_code=422, username=username,
                           error="Enter your username and password.")
    try:
        signed = await run_in_threadpool(signin.password_sign_in, rt, username, password, otp or None,
                                         source=cookies.client_address(request),
                                         user_agent=request.headers.get("user-agent", ""))
    except LoginRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return _login_page(request, rt, next_url=next_url, status_code=exc.status, username=username,
                           error=str(exc).capitalize() + ".", headers=headers)
    response = _see_other(next_url if signed.mfa_state in ("off", "passed") else "/account")
    cookies.set_session_cookie(response, signed.secret, rt.settings)
    response.delete_cookie(cookies.LOGIN_CSRF_COOKIE, path="/")
    return response


async def _form_session(request: Request, rt: Runtime, *, allow_pending: bool) -> ActiveSession:
    """The session of a form post with its CSRF token checked (HTTPException otherwise)."""
    return await cookies.session_for_request(request, rt, allow_pending=allow_pending)


def _refused_page(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 401:
        return _see_other("/login?next=/account")
    return error_page(request, exc.status_code, "Request refused", str(exc.detail))


@router.post("/logout", response_class=Response)
async def logout_submit(request: Request, rt: RuntimeDep) -> Response:
    """Sign out of this browser session."""
    try:
        active = await _form_session(request, rt, allow_pending=True)
    except HTTPException as exc:
        return _refused_page(request, exc)

    def end() -> None:
        with rt.db.session() as s:
            sessions.revoke_session(s, active.id, user_id=active.principal.user_id,
                                    actor=active.principal.username, source=cookies.client_address(request))

    await run_in_threadpool(end)
    response = _see_other("/login")
    cookies.clear_session_cookie(response, rt.settings)
    return response


def _account_context(rt: Runtime, active: ActiveSession) -> dict[str, Any]:
    with rt.db.read_session() as s:
        user = s.get(User, active.principal.user_id)
        rows = sessions.live_sessions(s, active.principal.user_id, rt.settings)
    return {"session": active, "user": user, "sessions": rows, "csrf_token": active.csrf_token,
            "mfa": active.mfa_state, "min_password": accounts.MIN_PASSWORD_LENGTH}


async def _account_page(request: Request, rt: Runtime, active: ActiveSession, *, error: str = "",
                        status_code: int = 200, extra: dict[str, Any] | None = None) -> Response:
    context = await run_in_threadpool(_account_context, rt, active)
    context.update({"error": error, "done": DONE_MESSAGES.get(request.query_params.get("done", ""), "")})
    context.update(extra or {})
    return render(request, "account.html", context, status_code=status_code)


@router.get("/account", response_class=Response)
async def account_page(request: Request, rt: RuntimeDep) -> Response:
    """Who am I, my sessions, my second factor, my password."""
    active = await _page_session(request, rt)
    if active is None:
        return _see_other("/login?next=/account")
    return await _account_page(request, rt, active)


async def _act(request: Request, rt: Runtime, *, allow_pending: bool, work: Any, done: str) -> Response:
    """Run one account form: check session and CSRF, do ``work(active)`` in a thread, redirect or re-render."""
    try:
        active = await _form_session(request, rt, allow_pending=allow_pending)
    except HTTPException as exc:
        return _refused_page(request, exc)
    try:
        await run_in_threadpool(work, active)
    except LoginRefused as exc:
        if exc.status == 429:
            return error_page(request, 429, "Too many attempts", str(exc), {"Retry-After": str(exc.retry_after)})
        return await _account_page(request, rt, active, error=str(exc).capitalize() + ".",
                                   status_code=exc.status)
    except (totp.TotpError, accounts.AccountError) as exc:
        return await _account_page(request, rt, active, error=str(exc).capitalize() + ".", status_code=422)
    return _see_other(f"/account?done={done}")


@router.post("/account/totp/verify", response_class=Response)
async def verify_submit(request: Request, rt: RuntimeDep, otp: CodeStr = "") -> Response:
    """Present the code a password sign-in still owes."""
    def work(active: ActiveSession) -> None:
        if active.mfa_state != "verify":
            raise totp.TotpError("this session owes no one-time code")
        signin.verify_second_factor(rt, active.id, active.principal.user_id, otp,
                                    source=cookies.client_address(request))

    return await _act(request, rt, allow_pending=True, work=work, done="verified")


@router.post("/account/totp/enroll", response_class=Response)
async def enroll_submit(request: Request, rt: RuntimeDep) -> Response:
    """Start enrolment: show the new secret as a QR code and as text, with the confirm form."""
    try:
        active = await _form_session(request, rt, allow_pending=True)
    except HTTPException as exc:
        return _refused_page(request, exc)

    def begin() -> tuple[str, str]:
        with rt.db.session() as s:
            user = s.get(User, active.principal.user_id)
            assert user is not None
            return totp.begin_enrollment(s, user, actor=active.principal.username,
                                         source=cookies.client_address(request))

    try:
        secret, uri = await run_in_threadpool(begin)
    except totp.TotpError as exc:
        return await _account_page(request, rt, active, error=str(exc).capitalize() + ".", status_code=409)
    qr = segno.make(uri, error="m").svg_data_uri(scale=5)
    return await _account_page(request, rt, active, extra={"enrollment": {"secret": secret, "uri": uri, "qr": qr}})


@router.post("/account/totp/confirm", response_class=Response)
async def confirm_submit(request: Request, rt: RuntimeDep, otp: CodeStr = "") -> Response:
    """Confirm enrolment with a first code."""
    return await _act(request, rt, allow_pending=True, done="totp-enabled",
                      work=lambda active: confirm(rt, active.principal, otp, cookies.client_address(request)))


@router.post("/account/totp/disable", response_class=Response)
async def disable_submit(request: Request, rt: RuntimeDep, otp: CodeStr = "") -> Response:
    """Remove the second factor (with a current code)."""
    return await _act(request, rt, allow_pending=False, done="totp-disabled",
                      work=lambda active: disable(rt, active.principal, otp, cookies.client_address(request)))


@router.post("/account/sessions/revoke-others", response_class=Response)
async def revoke_others_submit(request: Request, rt: RuntimeDep) -> Response:
    """Sign out every other session of mine."""
    def work(active: ActiveSession) -> None:
        with rt.db.session() as s:
            sessions.revoke_user_sessions(s, active.principal.user_id, actor=active.principal.username,
                                          source=cookies.client_address(request), reason="sign out everywhere",
                                          keep_session_id=active.id)

    return await _act(request, rt, allow_pending=False, work=work, done="signed-out-others")


@router.post("/account/password", response_class=Response)
async def password_submit(request: Request, rt: RuntimeDep, current_password: FieldStr = "",
                          new_password: FieldStr = "", confirm_password: FieldStr = "") -> Response:
    """Change my password (my other sessions end)."""
    def work(active: ActiveSession) -> None:
        if new_password != confirm_password:
            raise accounts.AccountError("the new password and its confirmation differ")
        change_password(rt, active.principal, current_password, new_password, cookies.client_address(request))

    return await _act(request, rt, allow_pending=False, work=work, done="password-changed")
