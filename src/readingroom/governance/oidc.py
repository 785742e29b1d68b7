"""Which ReadingRoom account an OpenID Connect identity signs in as (the rules; ``oidc_api.py`` runs the
protocol through Authlib).

An identity is the pair (issuer, subject): the only identifier the OpenID
Connect specification promises is stable and unique. Emails and usernames
change and are reused, so they are used only once, to link an existing
account at its first single sign-on, and only when that account has no
link yet; from then on the pair alone decides. Unknown identities are
refused unless ``oidc_auto_create`` is on.

Trust note for operators: linking by ``preferred_username`` trusts the
provider not to let users pick someone else's username (Keycloak does not
by default); linking by email requires ``email_verified``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from readingroom.config import Settings
from readingroom.governance import audit
from readingroom.governance.models import User
from readingroom.governance.users import ROLES, UserError, create_user, get_user

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class OidcError(Exception):
    """A single sign-on that cannot be completed; the message is safe to show to the user."""


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted claim path (``realm_access.roles`` for Keycloak realm roles), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def role_from_claims(claims: dict[str, Any], claim_path: str) -> str | None:
    """The ReadingRoom role named by the role claim (the first in ``ROLES`` order when several are)."""
    if not claim_path:
        return None
    value = claim_at(claims, claim_path)
    names = {value} if isinstance(value, str) else {v for v in value if isinstance(v, str)} \
        if isinstance(value, list) else set()
    return next((role for role in ROLES if role in names), None)


def _verified_email(claims: dict[str, Any]) -> str:
    email = claims.get("email")
    if isinstance(email, str) and "@" in email and claims.get("email_verified") is True:
        return email.strip()
    return ""


def _link_candidate(session: Session, claims: dict[str, Any]) -> tuple[User, str] | None:
    """The existing account this identity may link to at its first sign-on, and by what."""
    email = _verified_email(claims)
    if email:
        matches = list(session.scalars(select(User).where(func.lower(User.email) == email.lower()).limit(2)))
        if len(matches) > 1:
            raise OidcError("several accounts share your email address; ask an administrator to link yours")
        if matches:
            return matches[0], "email"
    preferred = claims.get("preferred_username")
    if isinstance(preferred, str) and preferred:
        user = get_user(session, preferred)
        if user is not None:
            return user, "preferred_username"
    return None


def _new_username(session: Session, claims: dict[str, Any]) -> str:
    wanted = [claims.get("preferred_username"), _verified_email(claims).split("@")[0]]
    for name in wanted:
        if isinstance(name, str) and _USERNAME.match(name) and get_user(session, name) is None:
            return name
    base = "sso-" + hashlib.sha256(f"{claims['iss']}|{claims['sub']}".encode()).hexdigest()[:10]
    return base if get_user(session, base) is None else f"{base}-{hashlib.sha256(base.encode()).hexdigest()[:4]}"


def user_for_identity(session: Session, settings: Settings, claims: dict[str, Any], *, source: str = "") -> User:
    """The active account of a verified identity: linked, linked now, or created (per the settings).

    ``claims`` must come from a validated ID token (merged with the UserInfo
    answer for the same subject). Applies ``oidc_role_claim`` when it names a
    ReadingRoom role. Raises OidcError with a reason the user can act on.
    """
    issuer, subject = str(claims.get("iss") or ""), str(claims.get("sub") or "")
    if not issuer or not subject:
        raise OidcError("the identity provider did not say who you are (no issuer or subject)")
    actor = f"oidc:{subject}"[:128]
    user = session.scalars(select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)).first()
    if user is None:
        found = _link_candidate(session, claims)
        if found is not None:
            user, by = found
            if user.oidc_subject:
                audit.record(session, actor=actor, source=source, action="auth.oidc_link", resource_type="user",
                             resource_id=user.username, outcome="failure", detail={"issuer": issuer, "by": by},
                             reason="account already linked to another identity")
                raise OidcError("the matching ReadingRoom account is linked to another identity; "
                                "ask an administrator")
            user.oidc_issuer, user.oidc_subject = issuer, subject
            audit.record(session, actor=actor, source=source, action="auth.oidc_link", resource_type="user",
                         resource_id=user.username, detail={"issuer": issuer, "subject": subject, "by": by})
        elif settings.oidc_auto_create:
            user = _create(session, settings, claims, issuer, subject, actor=actor, source=source)
        else:
            raise OidcError("there is no ReadingRoom account for this identity; ask an administrator for one")
    if not user.active:
        raise OidcError("this ReadingRoom account is deactivated")
    role = role_from_claims(claims, settings.oidc_role_claim)
    if role is not None and role != user.role:
        audit.record(session, actor=actor, source=source, action="users.role_change", resource_type="user",
                     resource_id=user.username, detail={"from": user.role, "to": role,
                                                        "claim": settings.oidc_role_claim})
        user.role = role
    return user


def _create(session: Session, settings: Settings, claims: dict[str, Any], issuer: str, subject: str, *,
            actor: str, source: str) -> User:
    role = role_from_claims(claims, settings.oidc_role_claim) or settings.oidc_default_role
    name = claims.get("name")
    try:
        user = create_user(session, _new_username(session, claims), role=role,
                           full_name=name[:128] if isinstance(name, str) else "", email=_verified_email(claims))
    except UserError as exc:  # oidc_default_role misconfigured
        raise OidcError(f"cannot create your account: {exc}") from exc
    user.oidc_issuer, user.oidc_subject = issuer, subject
    audit.record(session, actor=actor, source=source, action="users.create", resource_type="user",
                 resource_id=user.username, detail={"via": "oidc", "issuer": issuer, "subject": subject,
                                                    "role": role})
    return user
