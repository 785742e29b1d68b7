"""Who is calling: bearer tokens and HTTP Basic, resolved to a Principal.

Argon2 is deliberately slow, so verified Basic credentials are remembered for
a short time (keyed by a hash of the header, never the password itself);
otherwise every DICOMweb request of a viewer would pay for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.governance import audit, login
from readingroom.governance.models import SiteMembership, User
from readingroom.governance.users import token_and_user
from readingroom.runtime import Runtime

BASIC_CACHE_SECONDS = 60.0
TOKEN_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class Principal:
    """An authenticated caller as the policy sees it.

    ``site_ids`` holds the home site and every site membership; ``site_roles``
    the role a membership grants at one site when it differs from ``role``
    (a radiologist who is site admin at one hospital). ``scopes`` narrows a
    scoped bearer token to some actions (None: everything the role allows).
    """

    user_id: int
    username: str
    role: str
    site_id: int | None
    site_ids: frozenset[int] = frozenset()
    site_roles: tuple[tuple[int, str], ...] = ()
    physician_name: str = ""
    scopes: frozenset[str] | None = None
    #: How the caller authenticated: 'basic', 'bearer', 'session' or 'peer' (DIMSE).
    via: str = "basic"
    session_id: int | None = None

    @classmethod
    def of(cls, user: User, *, memberships: list[tuple[int, str]] | None = None,
           scopes: list[str] | None = None, via: str = "basic", session_id: int | None = None) -> Principal:
        members = memberships or []
        sites = {site for site, _ in members}
        if user.site_id is not None:
            sites.add(user.site_id)
        return cls(user_id=user.id, username=user.username, role=user.role, site_id=user.site_id,
                   site_ids=frozenset(sites), site_roles=tuple(sorted((s, r) for s, r in members if r)),
                   physician_name=user.physician_name or "",
                   scopes=frozenset(scopes) if scopes else None, via=via, session_id=session_id)

    def roles_at(self, site_id: int | None) -> frozenset[str]:
        """The roles this principal holds at one site (its own role everywhere it is a member)."""
        roles = {self.role}
        roles.update(r for s, r in self.site_roles if s == site_id)
        return frozenset(roles)


def principal_for(session: Session, user: User, **kwargs: Any) -> Principal:
    """Build the Principal of ``user`` with its site memberships loaded (keyword args as ``Principal.of``)."""
    rows = session.execute(select(SiteMembership.site_id, SiteMembership.role)
                           .where(SiteMembership.user_id == user.id)).all()
    return Principal.of(user, memberships=[(site, role or "") for site, role in rows], **kwargs)


class AuthError(Exception):
    """Authentication failed; the message is safe to show to the caller."""


class ThrottledError(AuthError):
    """Too many failed attempts from the caller's address; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_cache: dict[str, tuple[float, Principal]] = {}
_cache_lock = threading.Lock()


def _cached(key: str) -> Principal | None:
    with _cache_lock:
        hit = _cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        _cache.pop(key, None)
    return None


def _remember(key: str, principal: Principal, ttl: float) -> None:
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[key] = (time.monotonic() + ttl, principal)


_forget_hooks: list[Callable[[], None]] = []


def on_forget(hook: Callable[[], None]) -> None:
    """Also run ``hook`` whenever credentials are forgotten (the browser-session cache registers here)."""
    _forget_hooks.append(hook)


def forget_cached_credentials() -> None:
    """Drop remembered credentials, browser sessions included (after a revocation, password or role change,
    deactivation)."""
    with _cache_lock:
        _cache.clear()
    for hook in _forget_hooks:
        hook()


def cached_principal(authorization: str | None) -> Principal | None:
    """The principal of a header verified recently, without any I/O (None: call ``authenticate_header``)."""
    if not authorization:
        return None
    return _cached(hashlib.sha256(authorization.encode()).hexdigest())


def authenticate_header(rt: Runtime, authorization: str | None, source: str = "") -> Principal:
    """Resolve an ``Authorization`` header or raise AuthError with the reason.

    ``source`` (the client address) keys the rate limit on failed Basic
    attempts; Basic failures also count towards the account's lockout.
    """
    if not authorization:
        raise AuthError("authentication required (Bearer token or HTTP Basic)")
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    key = hashlib.sha256(authorization.encode()).hexdigest()
    if scheme.lower() == "bearer":
        if not value:
            raise AuthError("empty bearer token")
        hit = _cached(key)
        if hit:
            return hit
        with rt.db.read_session() as s:
            found = token_and_user(s, value)
            if found is None:
                raise AuthError("invalid, expired or revoked token")
            token, user = found
            principal = principal_for(s, user, via="bearer", scopes=list(token.scopes or []))
        _remember(key, principal, TOKEN_CACHE_SECONDS)
        return principal
    if scheme.lower() == "basic":
        hit = _cached(key)
        if hit:
            return hit
        try:
            username, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthError("malformed Basic credentials") from exc
        principal = _basic(rt, username, password, source)
        _remember(key, principal, BASIC_CACHE_SECONDS)
        return principal
    raise AuthError(f"unsupported authorization scheme {scheme!r}")


def _basic(rt: Runtime, username: str, password: str, source: str) -> Principal:
    """Verify Basic credentials with the login protections; accounts with a second factor cannot use Basic
    (it would bypass the factor): they use bearer tokens."""
    try:
        login.throttle(rt, source or "unknown", count=False)
        verified = login.check_password(rt, username, password, source=source, method="basic")
    except login.LoginRefused as exc:
        if exc.status == 429:
            raise ThrottledError(str(exc), exc.retry_after or 60) from exc
        login.limiter_for(rt).hit(source or "unknown", max(1, rt.settings.login_rate_per_minute))
        raise AuthError(str(exc)) from exc
    user = verified.user
    with rt.db.read_session() as s:
        if user.totp_enabled or login.mfa_required(s, user, rt.settings):
            audit.record_soon(rt.db, actor=user.username, source=source, action="auth.login", resource_type="user",
                              resource_id=user.username, outcome="failure", detail={"method": "basic"},
                              reason="account needs a second factor")
            raise AuthError("this account signs in with a second factor, which HTTP Basic cannot carry; "
                            "use a bearer token (POST /api/v1/tokens after signing in)")
        principal = principal_for(s, user, via="basic")
    if verified.had_failures:
        with rt.db.session() as s:
            login.note_success(s, user.id)
    return principal
