"""Who acts for a clinician on critical results: one delegate per clinician, optionally time-boxed.

A clinician going off duty names a colleague; the escalation ladder tells
that colleague when the clinician has not acknowledged in time, and the
colleague may acknowledge on the clinician's behalf. A window
(``valid_from`` / ``valid_until``) covers leave without anyone having to
remember to remove the delegation afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.critical_models import CriticalDelegation
from readingroom.governance import audit, policy
from readingroom.governance.models import User


class DelegationError(ValueError):
    """The delegation asked for cannot be made (unknown user, oneself, a role that cannot acknowledge ...)."""


@dataclass(frozen=True)
class Delegation:
    user: str
    delegate: str
    valid_from: datetime | None
    valid_until: datetime | None
    reason: str
    active: bool


def active_delegate(session: Session, user_id: int, now: datetime | None = None) -> User | None:
    """The active account acting for ``user_id`` now, if any."""
    now = now or utcnow()
    return session.scalars(
        select(User).join(CriticalDelegation, CriticalDelegation.delegate_id == User.id).where(
            CriticalDelegation.user_id == user_id, User.active,
            or_(CriticalDelegation.valid_from.is_(None), CriticalDelegation.valid_from <= now),
            or_(CriticalDelegation.valid_until.is_(None), CriticalDelegation.valid_until > now))
    ).first()


def get_delegation(session: Session, user: User) -> Delegation | None:
    row = session.get(CriticalDelegation, user.id)
    if row is None:
        return None
    delegate = session.get(User, row.delegate_id)
    now = utcnow()
    active = bool(delegate and delegate.active and (row.valid_from is None or row.valid_from <= now)
                  and (row.valid_until is None or row.valid_until > now))
    return Delegation(user.username, delegate.username if delegate else "", row.valid_from, row.valid_until,
                      row.reason, active)


def set_delegation(session: Session, user: User, delegate_name: str, *, valid_from: datetime | None = None,
                   valid_until: datetime | None = None, reason: str = "") -> Delegation:
    """Name (or replace) ``user``'s delegate; the delegate must be an active account that may acknowledge."""
    delegate = session.scalars(select(User).where(User.username == delegate_name)).first()
    if delegate is None or not delegate.active:
        raise DelegationError(f"no active user {delegate_name!r}")
    if delegate.id == user.id:
        raise DelegationError("a delegate must be someone else")
    if policy.CRITICAL_ACK not in policy.actions_for_role(delegate.role):
        raise DelegationError(f"{delegate_name!r} ({delegate.role}) may not acknowledge critical results")
    if valid_from and valid_until and valid_until <= valid_from:
        raise DelegationError("valid_until must be after valid_from")
    if valid_until and valid_until <= utcnow():
        raise DelegationError("valid_until is in the past")
    session.execute(delete(CriticalDelegation).where(CriticalDelegation.user_id == user.id))
    session.add(CriticalDelegation(user_id=user.id, delegate_id=delegate.id, valid_from=valid_from,
                                   valid_until=valid_until, reason=reason, created_at=utcnow()))
    audit.record(session, actor=user.username, action="critical.delegate", resource_type="user",
                 resource_id=user.username, detail={"delegate": delegate_name, "valid_from": _iso(valid_from),
                                                    "valid_until": _iso(valid_until)})
    session.flush()
    found = get_delegation(session, user)
    assert found is not None
    return found


def clear_delegation(session: Session, user: User) -> bool:
    """Remove ``user``'s delegate; False if there was none."""
    gone = session.execute(delete(CriticalDelegation).where(CriticalDelegation.user_id == user.id)).rowcount
    if gone:
        audit.record(session, actor=user.username, action="critical.delegate_cleared", resource_type="user",
                     resource_id=user.username)
    return bool(gone)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
