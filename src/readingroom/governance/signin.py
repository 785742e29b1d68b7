"""Interactive sign-in: password (and one-time code) or OpenID Connect, ending in a browser session.

The second factor decides what the new session may do:

* ``off``: the user has no second factor and their roles do not need one;
* ``passed``: a valid one-time code came with the password (or the
  identity provider asserted multi-factor authentication);
* ``verify``: the user has a second factor and still owes a code; the
  session may only verify it or sign out;
* ``enroll``: a role in ``mfa_required_roles`` needs a second factor the
  user has not set up; the session may only enrol one or sign out.

The failure counter of the account is reset only when the whole sign-in
succeeded: a right password followed by wrong codes keeps counting, so
knowing the password does not buy unlimited guesses at the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.config import Settings
from readingroom.governance import audit, sessions, totp
from readingroom.governance.login import (
    LOCKED,
    LoginRefused,
    check_password,
    is_locked,
    mfa_required,
    note_success,
    record_failure,
    throttle,
)
from readingroom.governance.models import User
from readingroom.runtime import Runtime

WRONG_CODE = "invalid or already used one-time code"
#: RFC 8176 authentication method references that count as more than a password.
MULTI_FACTOR_AMR = frozenset({"mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm", "sms",
                              "tel", "mca"})


@dataclass(frozen=True)
class SignedIn:
    """A new session: the cookie secret (give it to the browser, never store it) and its state."""

    session_id: int
    secret: str
    csrf_token: str
    username: str
    role: str
    full_name: str
    mfa_state: str
    expires_at: datetime


def _open(session: Session, settings: Settings, user: User, *, method: str, mfa_state: str, source: str,
          user_agent: str, detail: dict[str, str]) -> SignedIn:
    row, secret = sessions.create_session(session, user, settings=settings, auth_method=method,
                                          mfa_passed=mfa_state in ("off", "passed"), source=source,
                                          user_agent=user_agent)
    if mfa_state in ("off", "passed", "enroll"):
        note_success(session, user.id)
    audit.record(session, actor=user.username, source=source, action="auth.login", resource_type="session",
                 resource_id=str(row.id), detail={"method": method, "mfa": mfa_state, **detail})
    return SignedIn(session_id=row.id, secret=secret, csrf_token=row.csrf_token, username=user.username,
                    role=user.role, full_name=user.full_name, mfa_state=mfa_state, expires_at=row.expires_at)


def password_sign_in(rt: Runtime, username: str, password: str, otp: str | None, *, source: str,
                     user_agent: str = "") -> SignedIn:
    """Check password (and code, if given) and open a session; raises LoginRefused (401/423/429)."""
    throttle(rt, source)
    verified = check_password(rt, username, password, source=source, method="password")
    refused: LoginRefused | None = None
    signed: SignedIn | None = None
    with rt.db.session() as s:
        user = s.scalars(select(User).where(User.id == verified.user.id).with_for_update()).one()
        if is_locked(user):  # locked by a concurrent failure since the password check
            refused = LoginRefused(LOCKED, status=423)
        elif user.totp_enabled and otp:
            if totp.check_code(s, user, otp):
                signed = _open(s, rt.settings, user, method="password", mfa_state="passed", source=source,
                               user_agent=user_agent, detail={})
            else:
                locked = record_failure(s, rt.settings, user.id, user.username, source=source,
                                        method="password+totp", reason="wrong or reused one-time code")
                refused = LoginRefused(LOCKED, status=423) if locked else LoginRefused(WRONG_CODE)
        else:
            state = "verify" if user.totp_enabled else "enroll" if mfa_required(s, user, rt.settings) else "off"
            signed = _open(s, rt.settings, user, method="password", mfa_state=state, source=source,
                           user_agent=user_agent, detail={})
    if refused is not None:
        raise refused
    assert signed is not None
    return signed


def verify_second_factor(rt: Runtime, session_id: int, user_id: int, code: str, *, source: str) -> None:
    """A session that owes its code presents it; on success the session may do everything."""
    throttle(rt, source)
    refused: LoginRefused | None = None
    with rt.db.session() as s:
        user = s.scalars(select(User).where(User.id == user_id).with_for_update()).one()
        if is_locked(user):
            refused = LoginRefused(LOCKED, status=423)
        elif totp.check_code(s, user, code):
            sessions.mark_mfa_passed(s, session_id)
            note_success(s, user.id)
            audit.record(s, actor=user.username, source=source, action="auth.login", resource_type="session",
                         resource_id=str(session_id), detail={"method": "totp", "mfa": "passed"})
        else:
            locked = record_failure(s, rt.settings, user.id, user.username, source=source, method="totp",
                                    reason="wrong or reused one-time code")
            refused = LoginRefused(LOCKED, status=423) if locked else LoginRefused(WRONG_CODE)
    if refused is not None:
        raise refused


def provider_asserted_mfa(amr: object) -> bool:
    """Whether an ID token's ``amr`` claim shows more than a password (RFC 8176)."""
    if not isinstance(amr, list):
        return False
    methods = {m for m in amr if isinstance(m, str)}
    return bool(methods & MULTI_FACTOR_AMR) or len(methods) >= 2


def oidc_sign_in(session: Session, settings: Settings, user: User, *, amr: object, issuer: str, source: str,
                 user_agent: str = "") -> SignedIn:
    """Open the session of a user the identity provider authenticated (inside the caller's transaction).

    A second factor the account needs is owed unless the provider says it
    already checked one; the organisation's provider usually does MFA itself.
    """
    needs_code = user.totp_enabled or mfa_required(session, user, settings)
    if not needs_code or provider_asserted_mfa(amr):
        state = "passed" if needs_code else "off"
    else:
        state = "verify" if user.totp_enabled else "enroll"
    return _open(session, settings, user, method="oidc", mfa_state=state, source=source, user_agent=user_agent,
                 detail={"issuer": issuer})
