"""Password checks with brute-force protection: account lockout and per-address rate limits.

Two independent brakes, because they stop different attacks:

* **Account lockout** stops guessing one account's password from many
  addresses: ``login_max_failures`` failures in a row (login form, JSON login,
  HTTP Basic, wrong one-time codes) lock the account for
  ``login_lockout_minutes``. The counter lives in the ``users`` row, so every
  process and every door shares it; a success resets it. While locked, even
  the right password is refused, so the lock is no oracle for the password.
* **Rate limiting per client address** stops one address from spraying many
  accounts: ``login_rate_per_minute`` attempts per sliding minute, then 429
  with ``Retry-After``. It is kept in this process's memory (a shared store
  would add a dependency for a brake that the lockout backs up anyway).

Timing: Argon2 runs for unknown, deactivated and locked accounts too, so a
caller cannot tell them apart by how long the answer takes; all of them get
the same message except a locked account, which gets the lock message.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.config import Settings
from readingroom.governance import audit
from readingroom.governance.models import SiteMembership, User
from readingroom.governance.users import _DUMMY_HASH, get_user, verify_password
from readingroom.runtime import Runtime

INVALID = "invalid username or password"
LOCKED = "account temporarily locked after repeated failed sign-ins; try again later or ask an administrator"
WINDOW_SECONDS = 60.0


class LoginRefused(Exception):
    """A sign-in attempt that did not succeed. ``status`` is the HTTP status an edge should answer with
    (401 wrong credentials, 423 locked, 429 rate limited), ``retry_after`` seconds when known."""

    def __init__(self, message: str, *, status: int = 401, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# -- per-address rate limit --------------------------------------------------------------------------------


class AttemptLimiter:
    """A sliding-window counter of attempts per key (client address), thread-safe, memory-bounded."""

    MAX_KEYS = 50_000

    def __init__(self, window: float = WINDOW_SECONDS) -> None:
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.MAX_KEYS:
                self._evict(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def _evict(self, now: float) -> None:
        for k in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[k]
        if len(self._hits) >= self.MAX_KEYS:  # all busy: forget the lot rather than grow without bound
            self._hits.clear()

    def retry_after(self, key: str, limit: int) -> int | None:
        """Seconds until ``key`` may try again, or None when it is under ``limit`` (nothing is counted)."""
        now = time.monotonic()
        with self._lock:
            hits = self._recent(key, now)
            if len(hits) < limit:
                return None
            return max(1, math.ceil(hits[0] + self.window - now))

    def hit(self, key: str, limit: int) -> int | None:
        """Count one attempt; returns seconds to wait if ``key`` was already at ``limit`` (then not counted)."""
        now = time.monotonic()
        with self._lock:
            hits = self._recent(key, now)
            if len(hits) >= limit:
                return max(1, math.ceil(hits[0] + self.window - now))
            hits.append(now)
            return None


def limiter_for(rt: Runtime) -> AttemptLimiter:
    """The process-wide limiter of this runtime's server."""
    return rt.cached("governance.login-limiter", math.inf, AttemptLimiter)


def throttle(rt: Runtime, source: str, *, count: bool = True) -> None:
    """Raise LoginRefused(429) when ``source`` used up its attempts this minute (``count``: this is one)."""
    limit = max(1, rt.settings.login_rate_per_minute)
    limiter = limiter_for(rt)
    wait = limiter.hit(source, limit) if count else limiter.retry_after(source, limit)
    if wait is not None:
        audit.record_soon(rt.db, actor="anonymous", source=source, action="auth.rate_limited",
                          outcome="failure", reason=f"more than {limit} sign-in attempts per minute")
        raise LoginRefused(f"too many sign-in attempts from your address; retry in {wait} s", status=429,
                           retry_after=wait)


# -- account lockout ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """A user whose password was right, with what the caller needs to decide the next step."""

    user: User
    had_failures: bool


def mfa_required(session: Session, user: User, settings: Settings) -> bool:
    """Whether any role the user holds (own or through a site membership) needs a second factor."""
    required = set(settings.mfa_required_roles)
    if not required:
        return False
    roles = {user.role, *session.scalars(select(SiteMembership.role).where(SiteMembership.user_id == user.id))}
    return bool(roles & required)


def is_locked(user: User) -> bool:
    return user.locked_until is not None and user.locked_until > utcnow()


def check_password(rt: Runtime, username: str, password: str, *, source: str, method: str) -> Verified:
    """Verify a password with lockout accounting; raises LoginRefused (401 or 423) and audits failures.

    Argon2 runs outside any write transaction (SQLite writers would otherwise
    wait for it); only a failure opens one, to count it.
    """
    with rt.db.read_session() as s:
        user = get_user(s, username) if username else None
    if user is None or not user.active:
        verify_password(_DUMMY_HASH, password)
        _failure(rt, None, username, source=source, method=method,
                 reason="unknown user" if user is None else "account deactivated")
        raise LoginRefused(INVALID)
    if is_locked(user):
        verify_password(_DUMMY_HASH, password)
        _failure(rt, None, username, source=source, method=method, reason="account locked")
        raise LoginRefused(LOCKED, status=423)
    if not verify_password(user.password_hash, password):
        locked = _failure(rt, user.id, username, source=source, method=method, reason="wrong password")
        raise LoginRefused(LOCKED if locked else INVALID, status=423 if locked else 401)
    return Verified(user=user, had_failures=bool(user.failed_logins or user.locked_until))


def _failure(rt: Runtime, user_id: int | None, username: str, *, source: str, method: str, reason: str) -> bool:
    with rt.db.session() as s:
        return record_failure(s, rt.settings, user_id, username, source=source, method=method, reason=reason)


def record_failure(session: Session, settings: Settings, user_id: int | None, username: str, *, source: str,
                   method: str, reason: str) -> bool:
    """Audit a failed attempt and count it against the account (if known); True if it locked the account.

    The row is read ``FOR UPDATE`` (PostgreSQL; SQLite writers are serialised
    anyway) so concurrent failures are all counted.
    """
    audit.record(session, actor=username[:128] or "anonymous", source=source, action="auth.login",
                 resource_type="user", resource_id=username[:128], outcome="failure",
                 detail={"method": method}, reason=reason)
    if user_id is None:
        return False
    user = session.scalars(select(User).where(User.id == user_id).with_for_update()).one()
    if is_locked(user):
        return True
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins < max(1, settings.login_max_failures):
        return False
    user.failed_logins = 0
    user.locked_until = utcnow() + timedelta(minutes=settings.login_lockout_minutes)
    row = audit.record(session, actor=user.username, source=source, action="auth.lockout", resource_type="user",
                       resource_id=user.username, outcome="failure",
                       detail={"method": method, "until": user.locked_until.isoformat()},
                       reason=f"{settings.login_max_failures} failed sign-ins in a row")
    row.flagged = True
    return True


def note_success(session: Session, user_id: int) -> None:
    """A successful sign-in resets the account's failure count (inside the caller's transaction)."""
    user = session.get(User, user_id)
    if user is not None and (user.failed_logins or user.locked_until is not None):
        user.failed_logins = 0
        user.locked_until = None


def unlock(session: Session, user: User, *, actor: str, source: str = "") -> None:
    """An administrator lifts a lockout before it expires."""
    user.failed_logins = 0
    user.locked_until = None
    audit.record(session, actor=actor, source=source, action="auth.unlock", resource_type="user",
                 resource_id=user.username)
