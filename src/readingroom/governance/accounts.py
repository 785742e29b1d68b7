"""Account changes that end credentials: password change and second-factor reset.

Each revokes what the old state made possible: a password change ends the
user's other sessions (whoever knew the old password is signed out), a
second-factor reset ends every session. Both are audited in the same
transaction. (Deactivation is an account-administration change in
``users_api.py``; it ends the sessions too.)
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.orm import Session

from readingroom.governance import audit, sessions, totp
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.models import User
from readingroom.governance.users import hash_password, verify_password

#: Shortest accepted new password (NIST SP 800-63B asks for at least 8; clinical accounts warrant more).
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024


class AccountError(ValueError):
    """An account change that cannot be made; the message says why."""


def check_new_password(user: User, new_password: str) -> None:
    """Reject passwords that are too short, too long or merely the username."""
    if len(new_password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the new password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(new_password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the new password must have at most {MAX_PASSWORD_LENGTH} characters")
    if new_password.strip().lower() == user.username.lower():
        raise AccountError("the new password must not be the username")


def _forget_credentials_at_commit(session: Session) -> None:
    forget_cached_credentials()
    event.listen(session, "after_commit", lambda _s: forget_cached_credentials(), once=True)


def change_password(session: Session, user: User, current: str, new: str, *, keep_session_id: int | None,
                    actor: str, source: str = "") -> int:
    """Set a new password after checking the current one; ends the user's other sessions (returns how many).

    Accounts without a local password (OIDC-only) cannot set one here: an
    administrator decides whether they get one.
    """
    if not user.password_hash or not verify_password(user.password_hash, current):
        audit.record(session, actor=actor, source=source, action="auth.password_change", resource_type="user",
                     resource_id=user.username, outcome="failure", reason="current password wrong")
        raise AccountError("the current password is not right")
    check_new_password(user, new)
    if verify_password(user.password_hash, new):
        raise AccountError("the new password must differ from the current one")
    user.password_hash = hash_password(new)
    audit.record(session, actor=actor, source=source, action="auth.password_change", resource_type="user",
                 resource_id=user.username)
    ended = sessions.revoke_user_sessions(session, user.id, actor=actor, source=source, reason="password change",
                                          keep_session_id=keep_session_id)
    _forget_credentials_at_commit(session)
    return ended


def reset_second_factor(session: Session, user: User, *, actor: str, source: str = "") -> None:
    """An administrator removes a lost second factor; the user enrols again at next sign-in."""
    totp.disable(session, user, actor=actor, source=source, reason="reset by administrator")
    sessions.revoke_user_sessions(session, user.id, actor=actor, source=source, reason="second factor reset")
