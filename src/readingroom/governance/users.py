"""Local accounts and API tokens.

Passwords are hashed with argon2 (argon2-cffi). Tokens are random secrets
shown once; only their SHA-256 is stored, so a database leak does not leak
working credentials. Tokens can expire and be revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import ApiToken, User

ROLES = (
    "admin",
    "site_admin",
    "radiologist",
    "technologist",
    "referring_clinician",
    "consultant",
    "partner",
    "auditor",
    "modality",
    "ai_engine",
)
TOKEN_PREFIX = "rr_"
_hasher = PasswordHasher()


class UserError(ValueError):
    """A user or token operation that cannot be done; the message says why."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(
    session: Session,
    username: str,
    *,
    password: str | None = None,
    role: str = "radiologist",
    full_name: str = "",
    email: str = "",
    site_id: int | None = None,
) -> User:
    """Add an account; the role must be one of ROLES."""
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if session.scalars(select(User).where(User.username == username)).first():
        raise UserError(f"user {username!r} already exists")
    user = User(
        username=username,
        full_name=full_name,
        email=email,
        password_hash=hash_password(password) if password else None,
        role=role,
        site_id=site_id,
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).first()


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session,
    user: User,
    *,
    name: str = "",
    expires_in: timedelta | None = None,
    scopes: list[str] | None = None,
) -> tuple[ApiToken, str]:
    """Issue a bearer token; returns the row and the secret (shown only now)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=token_hash(secret),
        prefix=secret[:10],
        scopes=scopes or [],
        created_at=now,
        expires_at=now + expires_in if expires_in else None,
    )
    session.add(token)
    session.flush()
    return token, secret


def revoke_token(session: Session, token_id: int) -> None:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise UserError(f"no token {token_id}")
    token.revoked_at = utcnow()


def token_and_user(session: Session, secret: str, now: datetime | None = None) -> tuple[ApiToken, User] | None:
    """The live token row of a bearer secret and its active user, or None if unknown/expired/revoked.

    The row carries the token's ``scopes`` (empty: everything the user's role allows).
    """
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == token_hash(secret))
    ).first()
    if row is None:
        return None
    token, user = row
    now = now or utcnow()
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    return (token, user) if user.active else None


def user_for_token(session: Session, secret: str, now: datetime | None = None) -> User | None:
    """The active user a bearer token belongs to, or None if unknown/expired/revoked."""
    found = token_and_user(session, secret, now)
    return found[1] if found else None


def user_for_password(session: Session, username: str, password: str) -> User | None:
    """The active user with these credentials, or None."""
    user = get_user(session, username)
    if user is None or not user.active:
        # Spend the same time as a real check so usernames cannot be probed by timing.
        verify_password(_DUMMY_HASH, password)
        return None
    return user if verify_password(user.password_hash, password) else None


_DUMMY_HASH = _hasher.hash("not-a-real-password")
