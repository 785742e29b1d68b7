"""Time-based one-time passwords (RFC 6238) as a second factor, through pyotp.

Enrolment is two steps so nobody is locked out by a secret their phone never
stored: ``begin_enrollment`` keeps a new secret beside the account (not yet
enabled) and ``confirm_enrollment`` enables it once the user typed a code
from it. Codes are 6 digits over 30-second steps, one step of clock drift
either way. The step of the last accepted code is stored, and a code is
accepted only for a later step, with a conditional UPDATE, so a code seen
over a shoulder or in a proxy log cannot be replayed even by two requests at
the same moment.
"""

from __future__ import annotations

import hmac

import pyotp
from sqlalchemy import or_, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import User

ISSUER = "ReadingRoom"
#: Steps of clock drift accepted either side of now.
DRIFT_STEPS = 1


class TotpError(ValueError):
    """A second-factor operation that cannot be done; the message says why."""


def provisioning_uri(secret: str, username: str) -> str:
    """The ``otpauth://`` URI authenticator apps scan (as a QR code) or import."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def _matching_step(secret: str, code: str) -> int | None:
    """The time step whose code equals ``code`` within the drift window, or None."""
    code = code.replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    now_step = totp.timecode(utcnow())
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _accept_step(session: Session, user: User, step: int) -> bool:
    """Record ``step`` as used if it is later than the last used one (atomic); False means a replay."""
    done = session.execute(
        update(User).where(User.id == user.id, or_(User.totp_last_step.is_(None), User.totp_last_step < step))
        .values(totp_last_step=step).execution_options(synchronize_session=False)).rowcount
    if done:  # keep the loaded row in step without a second UPDATE at flush
        set_committed_value(user, "totp_last_step", step)
    return bool(done)


def check_code(session: Session, user: User, code: str) -> bool:
    """Whether ``code`` is a fresh, valid code of the user's enabled second factor (consumes it)."""
    if not user.totp_enabled or not user.totp_secret:
        return False
    step = _matching_step(user.totp_secret, code)
    return step is not None and _accept_step(session, user, step)


def begin_enrollment(session: Session, user: User, *, actor: str, source: str = "") -> tuple[str, str]:
    """Give the user a new secret to confirm; returns (secret, otpauth URI). Refused while one is enabled
    (disable it first with a current code), so a stolen password cannot replace the phone."""
    if user.totp_enabled:
        raise TotpError("a second factor is already enabled; disable it with a current code first")
    secret = pyotp.random_base32()
    user.totp_secret = secret
    user.totp_last_step = None
    audit.record(session, actor=actor, source=source, action="auth.totp_enroll", resource_type="user",
                 resource_id=user.username, detail={"step": "begin"})
    return secret, provisioning_uri(secret, user.username)


def confirm_enrollment(session: Session, user: User, code: str, *, actor: str, source: str = "") -> None:
    """Enable the pending secret once the user proved their app produces its codes."""
    if user.totp_enabled:
        raise TotpError("the second factor is already enabled")
    if not user.totp_secret:
        raise TotpError("no enrolment in progress; start one first")
    step = _matching_step(user.totp_secret, code)
    if step is None:
        audit.record(session, actor=actor, source=source, action="auth.totp_enroll", resource_type="user",
                     resource_id=user.username, outcome="failure", detail={"step": "confirm"},
                     reason="wrong code")
        raise TotpError("that code does not match; check the time on your device and try the next code")
    user.totp_enabled = True
    user.totp_last_step = step
    audit.record(session, actor=actor, source=source, action="auth.totp_enroll", resource_type="user",
                 resource_id=user.username, detail={"step": "confirm"})


def disable(session: Session, user: User, *, actor: str, source: str = "", reason: str = "") -> None:
    """Remove the second factor (the caller checked a current code, or an administrator resets it)."""
    user.totp_enabled = False
    user.totp_secret = None
    user.totp_last_step = None
    audit.record(session, actor=actor, source=source, action="auth.totp_disable", resource_type="user",
                 resource_id=user.username, reason=reason)
