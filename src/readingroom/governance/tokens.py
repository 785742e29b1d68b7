"""Scoped, expiring, revocable API tokens (the rules; ``tokens_api.py`` is the HTTP edge).

A token may be narrowed to some actions (``scopes``): an AI engine's token
that may only post findings, a viewer's that may only read. A scope must be
an action the owner's role allows, and a caller authenticated by a scoped
token can only mint tokens within its own scopes, so a leaked narrow token
never yields a broad one. Scopes are enforced by ``policy.allowed``.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance import audit, policy
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.models import ApiToken, User
from readingroom.governance.users import create_token

#: Longest lifetime a token may be given (ten years; ``None`` asks for a token that never expires).
MAX_DAYS = 3650.0


class TokenError(ValueError):
    """A token request that cannot be granted; the message says why."""


def validate_scopes(role: str, requested: list[str], caller_scopes: frozenset[str] | None) -> list[str]:
    """The scopes a new token gets: each must be allowed to ``role`` and within the caller's own scopes.

    No scopes requested means "everything the caller may do now": the role's
    actions for a session or full token, the caller's scopes for a scoped one.
    """
    wanted = sorted({s.strip() for s in requested if s.strip()})
    role_actions = policy.actions_for_role(role)
    unknown = [s for s in wanted if s not in role_actions]
    if unknown:
        raise TokenError(f"scope(s) not allowed for role {role!r}: {', '.join(unknown)}; "
                         f"choose from {', '.join(sorted(role_actions)) or 'nothing'}")
    if caller_scopes is not None:
        beyond = [s for s in wanted if s not in caller_scopes]
        if beyond:
            raise TokenError(f"a scoped token cannot grant more than its own scopes: {', '.join(beyond)}")
        return wanted or sorted(caller_scopes)
    return wanted


def issue_token(session: Session, user: User, *, name: str, expires_in_days: float | None, scopes: list[str],
                caller_scopes: frozenset[str] | None, actor: str, source: str = "") -> tuple[ApiToken, str]:
    """Create a token for ``user`` (validated) and audit it; returns the row and the secret, shown once."""
    if expires_in_days is not None and not 0 < expires_in_days <= MAX_DAYS:
        raise TokenError(f"expires_in_days must be more than 0 and at most {MAX_DAYS:g} (or null: never)")
    name = name.strip()
    if len(name) > 64:
        raise TokenError("name must be at most 64 characters")
    granted = validate_scopes(user.role, scopes, caller_scopes)
    token, secret = create_token(session, user, name=name, scopes=granted,
                                 expires_in=timedelta(days=expires_in_days) if expires_in_days else None)
    audit.record(session, actor=actor, source=source, action="auth.token_create", resource_type="token",
                 resource_id=str(token.id), detail={"user": user.username, "name": name, "scopes": granted,
                                                    "expires_at": token.expires_at.isoformat()
                                                    if token.expires_at else None, "prefix": token.prefix})
    return token, secret


def list_tokens(session: Session, user_id: int, *, include_ended: bool = False) -> list[ApiToken]:
    """A user's tokens, newest first (live ones only unless ``include_ended``)."""
    query = select(ApiToken).where(ApiToken.user_id == user_id)
    if not include_ended:
        now = utcnow()
        query = query.where(ApiToken.revoked_at.is_(None),
                            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))
    return list(session.scalars(query.order_by(ApiToken.created_at.desc(), ApiToken.id.desc())))


def revoke(session: Session, token: ApiToken, *, actor: str, source: str = "", reason: str = "") -> bool:
    """Revoke a token now; False if it was already revoked. Drops this process's credential cache at commit."""
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    audit.record(session, actor=actor, source=source, action="auth.token_revoke", resource_type="token",
                 resource_id=str(token.id), detail={"prefix": token.prefix, "name": token.name}, reason=reason)
    _forget_at_commit(session)
    return True


def _forget_at_commit(session: Session) -> None:
    forget_cached_credentials()
    event.listen(session, "after_commit", lambda _s: forget_cached_credentials(), once=True)
