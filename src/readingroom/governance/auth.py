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
from dataclasses import dataclass

from readingroom.governance.models import User
from readingroom.governance.users import user_for_password, user_for_token
from readingroom.runtime import Runtime

BASIC_CACHE_SECONDS = 60.0
TOKEN_CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class Principal:
    """An authenticated caller as the policy sees it."""

    user_id: int
    username: str
    role: str
    site_id: int | None

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(user_id=user.id, username=user.username, role=user.role, site_id=user.site_id)


class AuthError(Exception):
    """Authentication failed; the message is safe to show to the caller."""


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


def forget_cached_credentials() -> None:
    """Drop remembered credentials (after a revocation or password change)."""
    with _cache_lock:
        _cache.clear()


def cached_principal(authorization: str | None) -> Principal | None:
    """The principal of a header verified recently, without any I/O (None: call ``authenticate_header``)."""
    if not authorization:
        return None
    return _cached(hashlib.sha256(authorization.encode()).hexdigest())


def authenticate_header(rt: Runtime, authorization: str | None) -> Principal:
    """Resolve an ``Authorization`` header or raise AuthError with the reason."""
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
            user = user_for_token(s, value)
        if user is None:
            raise AuthError("invalid, expired or revoked token")
        principal = Principal.of(user)
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
        with rt.db.read_session() as s:
            user = user_for_password(s, username, password)
        if user is None:
            raise AuthError("invalid username or password")
        principal = Principal.of(user)
        _remember(key, principal, BASIC_CACHE_SECONDS)
        return principal
    raise AuthError(f"unsupported authorization scheme {scheme!r}")
