"""HTTP edge of sign-in: sessions, second factor and password under ``/api/v1/auth``.

Every route that changes something and is called with the session cookie
needs the ``X-CSRF-Token`` header (see ``cookies.py``); sign-in itself takes
JSON only, which a cross-site form cannot send without a CORS preflight.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.governance import accounts, cookies, sessions, signin, totp
from readingroom.governance.api import PendingPrincipalDep, PrincipalDep, RuntimeDep
from readingroom.governance.auth import Principal
from readingroom.governance.login import LoginRefused, mfa_required, record_failure, throttle
from readingroom.governance.models import User
from readingroom.governance.sessions import ActiveSession
from readingroom.runtime import Runtime

router = APIRouter(prefix="/auth", tags=["authentication"])

MfaState = Literal["off", "passed", "verify", "enroll"]


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    otp: str | None = Field(default=None, max_length=16, description="Current one-time code, if enrolled")


class UserBrief(BaseModel):
    username: str
    role: str
    full_name: str = ""


class SessionOut(BaseModel):
    session_id: int
    user: UserBrief
    csrf_token: str = Field(description="Send as X-CSRF-Token with every unsafe request of this session")
    mfa: MfaState = Field(description="off | passed | verify (a code is owed) | enroll (must set one up)")
    auth_method: str
    expires_at: datetime


class SessionInfo(BaseModel):
    id: int
    auth_method: str
    source: str
    user_agent: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    current: bool


class CodeIn(BaseModel):
    otp: str = Field(min_length=1, max_length=16)


class EnrollOut(BaseModel):
    secret: str = Field(description="Base32 secret, for typing into an authenticator app")
    otpauth_uri: str = Field(description="The same as an otpauth:// URI (show it as a QR code)")


class PasswordIn(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class Revoked(BaseModel):
    revoked: int


#: The answers of a refused sign-in, code or password check (documented in the OpenAPI document).
REFUSED: dict[int | str, dict[str, Any]] = {
    401: error_response("Wrong username, password or one-time code"),
    423: error_response("The account is locked after repeated failures (Retry-After says for how long)"),
    429: error_response("Too many attempts from this address (Retry-After says when to retry)"),
}
NOT_A_SESSION: dict[int | str, dict[str, Any]] = {
    400: error_response("This request is not signed in with a browser session (rr_session cookie)")}


def refused(exc: LoginRefused) -> HTTPException:
    """The HTTP answer to a refused sign-in (401 / 423 / 429 with Retry-After)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return HTTPException(exc.status, detail=str(exc), headers=headers)


def _current(request: Request) -> ActiveSession:
    active: ActiveSession | None = getattr(request.state, "auth_session", None)
    if active is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            detail="this request is not signed in with a browser session (rr_session cookie)")
    return active


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


@router.post("/login", response_model=SessionOut, responses=REFUSED)
async def login(body: LoginIn, request: Request, response: Response, rt: RuntimeDep) -> SessionOut:
    """Sign in with username and password (and a one-time code when enrolled); sets the ``rr_session`` cookie.

    ``mfa`` says what the session may do: ``verify`` / ``enroll`` sessions may
    only complete their second factor or sign out.
    """
    try:
        signed = await run_in_threadpool(signin.password_sign_in, rt, body.username, body.password, body.otp,
                                         source=cookies.client_address(request),
                                         user_agent=request.headers.get("user-agent", ""))
    except LoginRefused as exc:
        raise refused(exc) from exc
    cookies.set_session_cookie(response, signed.secret, rt.settings)
    _no_store(response)
    return SessionOut(session_id=signed.session_id, csrf_token=signed.csrf_token, mfa=cast(MfaState, signed.mfa_state),
                      user=UserBrief(username=signed.username, role=signed.role, full_name=signed.full_name),
                      auth_method="password", expires_at=signed.expires_at)


@router.post("/logout", status_code=204, response_class=Response, responses=NOT_A_SESSION)
def logout(request: Request, rt: RuntimeDep, principal: PendingPrincipalDep) -> Response:
    """End this browser session and clear its cookie."""
    active = _current(request)
    with rt.db.session() as s:
        sessions.revoke_session(s, active.id, user_id=principal.user_id, actor=principal.username,
                                source=cookies.client_address(request), reason="logout")
    response = Response(status_code=204)
    cookies.clear_session_cookie(response, rt.settings)
    return response


@router.get("/session", response_model=SessionOut, responses=NOT_A_SESSION)
def current_session(request: Request, response: Response, principal: PendingPrincipalDep) -> SessionOut:
    """This browser session: who, its CSRF token and second-factor state."""
    active = _current(request)
    _no_store(response)
    return SessionOut(session_id=active.id, csrf_token=active.csrf_token, mfa=cast(MfaState, active.mfa_state),
                      user=UserBrief(username=principal.username, role=principal.role),
                      auth_method=active.auth_method, expires_at=active.expires_at)


@router.get("/sessions", response_model=list[SessionInfo])
def my_sessions(rt: RuntimeDep, principal: PrincipalDep) -> list[SessionInfo]:
    """The caller's live browser sessions (where and when they signed in)."""
    with rt.db.read_session() as s:
        rows = sessions.live_sessions(s, principal.user_id, rt.settings)
    return [SessionInfo(id=r.id, auth_method=r.auth_method, source=r.source, user_agent=r.user_agent,
                        created_at=r.created_at, last_seen_at=r.last_seen_at, expires_at=r.expires_at,
                        current=r.id == principal.session_id) for r in rows]


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response)
def end_session(session_id: int, request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    """Sign one of the caller's sessions out (e.g. a forgotten browser at another workstation)."""
    with rt.db.session() as s:
        done = sessions.revoke_session(s, session_id, user_id=principal.user_id, actor=principal.username,
                                       source=cookies.client_address(request), reason="signed out by owner")
    if not done:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no live session {session_id} of yours")
    response = Response(status_code=204)
    if session_id == principal.session_id:
        cookies.clear_session_cookie(response, rt.settings)
    return response


@router.delete("/sessions", response_model=Revoked)
def end_other_sessions(request: Request, rt: RuntimeDep, principal: PrincipalDep,
                       include_current: bool = False) -> Revoked:
    """Sign out everywhere else (``include_current``: here too)."""
    keep = None if include_current else principal.session_id
    with rt.db.session() as s:
        count = sessions.revoke_user_sessions(s, principal.user_id, actor=principal.username,
                                              source=cookies.client_address(request), reason="sign out everywhere",
                                              keep_session_id=keep)
    return Revoked(revoked=count)


# -- second factor -------------------------------------------------------------------------------------------


def _account(s: Session, principal: Principal) -> User:
    user = s.get(User, principal.user_id)
    if user is None or not user.active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="account no longer active")
    return user


@router.post("/totp/enroll", response_model=EnrollOut,
             responses={409: error_response("A second factor is already enabled")})
def totp_enroll(request: Request, response: Response, rt: RuntimeDep, principal: PendingPrincipalDep) -> EnrollOut:
    """Start setting up a one-time-code app: returns a new secret to confirm with ``/totp/confirm``."""
    with rt.db.session() as s:
        user = _account(s, principal)
        try:
            secret, uri = totp.begin_enrollment(s, user, actor=principal.username,
                                                source=cookies.client_address(request))
        except totp.TotpError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    _no_store(response)
    return EnrollOut(secret=secret, otpauth_uri=uri)


def confirm(rt: Runtime, principal: Principal, code: str, source: str) -> None:
    """Enable the enrolled factor; the current session counts as verified, the user's other sessions end
    (they were opened without the factor). Raises TotpError."""
    with rt.db.session() as s:
        user = _account(s, principal)
        try:
            totp.confirm_enrollment(s, user, code, actor=principal.username, source=source)
        except totp.TotpError as exc:
            failed = exc
        else:
            if principal.session_id is not None:
                sessions.mark_mfa_passed(s, principal.session_id)
            sessions.revoke_user_sessions(s, user.id, actor=principal.username, source=source,
                                          reason="second factor enabled", keep_session_id=principal.session_id)
            return
    raise failed  # after the commit, so the failure's audit record is kept


@router.post("/totp/confirm", status_code=204, response_class=Response, responses=REFUSED)
def totp_confirm(body: CodeIn, request: Request, rt: RuntimeDep, principal: PendingPrincipalDep) -> Response:
    """Confirm enrolment with a code from the app; the second factor is then required at every sign-in."""
    source = cookies.client_address(request)
    try:
        throttle(rt, source)
        confirm(rt, principal, body.otp, source)
    except LoginRefused as exc:
        raise refused(exc) from exc
    except totp.TotpError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return Response(status_code=204)


@router.post("/totp/verify", status_code=204, response_class=Response, responses={
    **REFUSED, **NOT_A_SESSION, 409: error_response("This session owes no one-time code")})
def totp_verify(body: CodeIn, request: Request, rt: RuntimeDep, principal: PendingPrincipalDep) -> Response:
    """Present the one-time code a session owes after a password sign-in."""
    active = _current(request)
    if active.mfa_state != "verify":
        raise HTTPException(status.HTTP_409_CONFLICT, detail="this session owes no one-time code")
    try:
        signin.verify_second_factor(rt, active.id, principal.user_id, body.otp,
                                    source=cookies.client_address(request))
    except LoginRefused as exc:
        raise refused(exc) from exc
    return Response(status_code=204)


def disable(rt: Runtime, principal: Principal, code: str, source: str) -> None:
    """Turn the factor off after checking a current code (a wrong code counts towards the lockout).
    Raises LoginRefused or TotpError."""
    throttle(rt, source)
    wrong = False
    with rt.db.session() as s:
        user = _account(s, principal)
        if not user.totp_enabled:
            raise totp.TotpError("no second factor is enabled")
        if mfa_required(s, user, rt.settings):
            raise totp.TotpError("your role requires a second factor; if you lost your device, ask an "
                                 "administrator to reset it")
        if totp.check_code(s, user, code):
            totp.disable(s, user, actor=principal.username, source=source, reason="by owner")
        else:
            record_failure(s, rt.settings, user.id, user.username, source=source, method="totp",
                           reason="wrong code to disable the second factor")
            wrong = True
    if wrong:
        raise LoginRefused(signin.WRONG_CODE, status=403)


@router.delete("/totp", status_code=204, response_class=Response, responses={
    **REFUSED, 409: error_response("No second factor is enabled, or the role requires one")})
def totp_disable(body: CodeIn, request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    """Remove the second factor (needs a current code; refused when the role requires one)."""
    try:
        disable(rt, principal, body.otp, cookies.client_address(request))
    except LoginRefused as exc:
        raise refused(exc) from exc
    except totp.TotpError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return Response(status_code=204)


# -- password ------------------------------------------------------------------------------------------------


def change_password(rt: Runtime, principal: Principal, current: str, new: str, source: str) -> int:
    """Check and set; ends the user's other sessions. Raises LoginRefused (rate) or AccountError."""
    throttle(rt, source)
    with rt.db.session() as s:
        user = _account(s, principal)
        try:
            return accounts.change_password(s, user, current, new, keep_session_id=principal.session_id,
                                            actor=principal.username, source=source)
        except accounts.AccountError as exc:
            failed = exc
    raise failed  # after the commit, so the failure's audit record is kept


@router.post("/password", response_model=Revoked, responses=REFUSED)
def password(body: PasswordIn, request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Revoked:
    """Change the caller's password; every other session of theirs ends (``revoked`` says how many)."""
    try:
        count = change_password(rt, principal, body.current_password, body.new_password,
                                cookies.client_address(request))
    except LoginRefused as exc:
        raise refused(exc) from exc
    except accounts.AccountError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return Revoked(revoked=count)
