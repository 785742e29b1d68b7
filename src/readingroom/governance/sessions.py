"""Server-side browser sessions.

The browser holds only a random secret (cookie ``rr_session``); the database
holds its SHA-256, so a leaked database or backup contains no usable session.
Each row carries the session's CSRF token (synchronizer pattern), whether the
second factor is still owed, and three clocks: an absolute end
(``session_hours``), an idle end (``session_idle_minutes`` after
``last_seen_at``) and an optional revocation.

Looking a session up costs a database read; a verified session is therefore
remembered in this process for a few seconds, the same trade-off the bearer
token cache makes. Every revocation made here drops that memory once its
transaction commits, so in the revoking process it takes effect at once (in
other processes within ``CACHE_SECONDS``). ``last_seen_at`` is written at
most once per ``TOUCH_INTERVAL`` so reading images does not turn every
request into a write.

This module is core: no web imports. Cookies and CSRF on the wire live in
``governance/cookies.py``.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.config import Settings
from readingroom.governance import audit, auth
from readingroom.governance.auth import Principal, principal_for
from readingroom.governance.models import User, UserSession
from readingroom.runtime import Runtime

#: How often at most a session's ``last_seen_at`` is written.
TOUCH_INTERVAL = timedelta(seconds=60)
#: How long this process reuses a verified session without asking the database.
CACHE_SECONDS = 5.0
#: Ended sessions are deleted this long after they ended (their audit records stay).
KEEP_ENDED = timedelta(days=7)


@dataclass(frozen=True)
class ActiveSession:
    """A live session as the HTTP edge needs it: who, its CSRF token and second-factor state."""

    id: int
    principal: Principal
    csrf_token: str
    mfa_passed: bool
    totp_enabled: bool
    auth_method: str
    created_at: datetime
    expires_at: datetime
    idle_expires_at: datetime

    @property
    def mfa_state(self) -> str:
        """'off' (no second factor), 'passed', 'verify' (a code is owed) or 'enroll' (must set one up)."""
        if self.mfa_passed:
            return "passed" if self.totp_enabled else "off"
        return "verify" if self.totp_enabled else "enroll"


def secret_hash(secret: str) -> str:
    """The stored form of a cookie secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_session(session: Session, user: User, *, settings: Settings, auth_method: str, mfa_passed: bool,
                   source: str = "", user_agent: str = "") -> tuple[UserSession, str]:
    """Open a session for ``user``; returns the row and the cookie secret (never stored)."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    row = UserSession(
        token_hash=secret_hash(secret), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
        auth_method=auth_method, mfa_passed=mfa_passed, source=source[:128], user_agent=user_agent[:255],
        created_at=now, last_seen_at=now, expires_at=now + timedelta(hours=settings.session_hours),
    )
    session.add(row)
    session.flush()
    return row, secret


# -- lookup ---------------------------------------------------------------------------------------------------

_cache: dict[str, tuple[float, ActiveSession]] = {}
_cache_lock = threading.Lock()


def forget_cached_sessions() -> None:
    """Drop every remembered session of this process (after any revocation)."""
    with _cache_lock:
        _cache.clear()


auth.on_forget(forget_cached_sessions)


def _forget_after_commit(session: Session) -> None:
    """Forget remembered sessions now and again once ``session`` commits (no stale re-caching in between)."""
    forget_cached_sessions()
    event.listen(session, "after_commit", lambda _s: forget_cached_sessions(), once=True)


def _idle_end(row: UserSession, settings: Settings) -> datetime:
    return row.last_seen_at + timedelta(minutes=settings.session_idle_minutes)


def cached_session(secret: str | None) -> ActiveSession | None:
    """The session of a cookie secret verified in the last few seconds, without any I/O (None: resolve it)."""
    if not secret or len(secret) > 128:
        return None
    with _cache_lock:
        hit = _cache.get(secret_hash(secret))
    if hit and hit[0] > time.monotonic() and utcnow() < min(hit[1].expires_at, hit[1].idle_expires_at):
        return hit[1]
    return None


def resolve_session(rt: Runtime, secret: str | None) -> ActiveSession | None:
    """The live session a cookie secret names, or None (unknown, ended, idle too long, user deactivated).

    Touches ``last_seen_at`` when it is older than ``TOUCH_INTERVAL``.
    """
    hit = cached_session(secret)
    if hit is not None:
        return hit
    if not secret or len(secret) > 128:
        return None
    key = secret_hash(secret)
    now = utcnow()
    settings = rt.settings
    with rt.db.read_session() as s:
        found = s.execute(select(UserSession, User).join(User, User.id == UserSession.user_id)
                          .where(UserSession.token_hash == key)).first()
        if found is None:
            return None
        row, user = found
        if row.revoked_at is not None or row.expires_at <= now or _idle_end(row, settings) <= now \
                or not user.active:
            return None
        principal = principal_for(s, user, via="session", session_id=row.id)
    last_seen = row.last_seen_at
    if now - last_seen >= TOUCH_INTERVAL:
        with rt.db.session() as s:
            s.execute(update(UserSession).where(UserSession.id == row.id, UserSession.revoked_at.is_(None))
                      .values(last_seen_at=now))
        last_seen = now
    active = ActiveSession(
        id=row.id, principal=principal, csrf_token=row.csrf_token, mfa_passed=row.mfa_passed,
        totp_enabled=user.totp_enabled, auth_method=row.auth_method, created_at=row.created_at,
        expires_at=row.expires_at,
        idle_expires_at=last_seen + timedelta(minutes=settings.session_idle_minutes),
    )
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[key] = (time.monotonic() + CACHE_SECONDS, active)
    return active


def live_sessions(session: Session, user_id: int, settings: Settings) -> list[UserSession]:
    """A user's sessions that are still usable, newest first."""
    now = utcnow()
    idle_cutoff = now - timedelta(minutes=settings.session_idle_minutes)
    return list(session.scalars(
        select(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None),
                                  UserSession.expires_at > now, UserSession.last_seen_at > idle_cutoff)
        .order_by(UserSession.created_at.desc(), UserSession.id.desc())))


# -- changes --------------------------------------------------------------------------------------------------


def mark_mfa_passed(session: Session, session_id: int) -> None:
    """The session's owner proved the second factor: it may now do everything the user may."""
    session.execute(update(UserSession).where(UserSession.id == session_id).values(mfa_passed=True))
    _forget_after_commit(session)


def revoke_session(session: Session, session_id: int, *, user_id: int | None, actor: str, source: str = "",
                   reason: str = "logout") -> bool:
    """End one session (of ``user_id`` when given); False if there was no such live session."""
    conditions = [UserSession.id == session_id, UserSession.revoked_at.is_(None)]
    if user_id is not None:
        conditions.append(UserSession.user_id == user_id)
    done = session.execute(update(UserSession).where(*conditions).values(revoked_at=utcnow())).rowcount
    if done:
        audit.record(session, actor=actor, source=source, action="auth.session_revoke", resource_type="session",
                     resource_id=str(session_id), detail={"reason": reason})
        _forget_after_commit(session)
    return bool(done)


def revoke_user_sessions(session: Session, user_id: int, *, actor: str, source: str = "", reason: str,
                         keep_session_id: int | None = None) -> int:
    """End every session of a user (except ``keep_session_id``): sign out everywhere, password change,
    deactivation. Returns how many ended."""
    conditions = [UserSession.user_id == user_id, UserSession.revoked_at.is_(None),
                  UserSession.expires_at > utcnow()]
    if keep_session_id is not None:
        conditions.append(UserSession.id != keep_session_id)
    count = session.execute(update(UserSession).where(*conditions).values(revoked_at=utcnow())).rowcount or 0
    audit.record(session, actor=actor, source=source, action="auth.sessions_revoke", resource_type="user",
                 resource_id=str(user_id), detail={"reason": reason, "count": count,
                                                   "kept_session": keep_session_id})
    _forget_after_commit(session)
    return count


def prune_ended_sessions(rt: Runtime) -> int:
    """Delete session rows that ended more than ``KEEP_ENDED`` ago (housekeeping; the audit trail keeps
    the logins and logouts). Safe to run in several processes at once."""
    cutoff = utcnow() - KEEP_ENDED
    idle_cutoff = cutoff - timedelta(minutes=rt.settings.session_idle_minutes)
    with rt.db.session() as s:
        return s.execute(delete(UserSession).where(or_(
            UserSession.expires_at < cutoff, UserSession.revoked_at < cutoff,
            UserSession.last_seen_at < idle_cutoff))).rowcount or 0
