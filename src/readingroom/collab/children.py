"""Child reads: a case asked about another case (consult, second opinion, second read, peer review).

A child is an ordinary case with ``kind`` and ``parent_case_id`` set, so the worklist's engine routes
it (with the explanation), lists it, lets exactly one reader claim it and escalates it against its
SLA. What the requester adds (a subspecialty, a named expert, readers to keep away, an SLA) goes in
``routing_request``, which the engine honours on every re-route.

A child has no study or patient of its own on purpose: the policy lets readers see the studies of the
cases routed to them *forever*, which is right for a primary read but not for a consultant. Access to
the parent (and its priors) comes only from one AccessGrant per child, held by whoever owns the child
now (the assignee or the claimer), moved when the owner changes and ended when the child is done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import AccessGrant, User
from readingroom.workflow.cases import Actor, get_case, log_event
from readingroom.workflow.dispatch import route_case
from readingroom.workflow.enums import Priority
from readingroom.workflow.models import Case
from readingroom.workflow.states import CaseState

CHILD_KINDS = ("consult", "second_opinion", "second_read", "peer_review")


class ChildError(ValueError):
    """The request cannot be made (unknown expert, bad priority, a child of a child ...): HTTP 422."""


def create_child(session: Session, parent: Case, kind: str, *, priority: str, actor: Actor,
                 routing_request: dict[str, Any], data: dict[str, Any], cache_key: str = "") -> Case:
    """Create the child case of ``parent``, log its creation on both cases and route it.

    The child copies the facts routing matches on (site, modality, body part, description, patient
    class, ordering physician for the conflict check) and becomes ready now: its SLA counts from the
    request, not from the parent's images.
    """
    if kind not in CHILD_KINDS:
        raise ChildError(f"unknown kind {kind!r}; one of {', '.join(CHILD_KINDS)}")
    if parent.kind != "read":
        raise ChildError(f"case {parent.id} is itself a {parent.kind}; ask about the case it belongs to")
    try:
        prio = Priority(priority)
    except ValueError as exc:
        raise ChildError(f"unknown priority {priority!r}; one of {', '.join(p.value for p in Priority)}") from exc
    now = utcnow()
    child = Case(
        kind=kind, parent_case_id=parent.id, routing_request=routing_request,
        accession_number=parent.accession_number, site_id=parent.site_id, modality=parent.modality,
        body_part=parent.body_part, description=parent.description, patient_class=parent.patient_class,
        patient_age_years=parent.patient_age_years, ordering_physician=parent.ordering_physician,
        order_fields={}, priority=prio.value, priority_rank=prio.rank, priority_source="request", flags=[],
        rvu=parent.rvu, state=CaseState.NEW.value, ready_at=now, created_at=now, updated_at=now, version=1,
        escalation_plan=[],
    )
    session.add(child)
    session.flush()
    log_event(session, child.id, "received", actor, "", CaseState.NEW.value,
              {"kind": kind, "parent_case_id": parent.id, **data}, now)
    route_case(session, child.id, actor=actor, reason=f"{kind} requested", cache_key=cache_key)
    return get_case(session, child.id)


def owner_of(child: Case) -> int | None:
    """Who holds the child now: the reader who claimed it, else the one it is pushed to."""
    return child.claimed_by or child.assignee


def sync_grant(session: Session, *, grant_id: int | None, child: Case, granted_by: str,
               expires_at: datetime | None = None, revoke: bool = False) -> int | None:
    """Make the child's one grant on its parent match its owner; returns the grant id to keep.

    * no owner yet (a pull child nobody claimed) or ``revoke``: the grant, if any, is revoked now;
    * the owner changed: the old grant is revoked and the new owner gets one;
    * ``expires_at``: the owner's grant ends then (an answered consult keeps a grace period).
    """
    now = utcnow()
    grant = session.get(AccessGrant, grant_id) if grant_id is not None else None
    if grant is not None and (grant.revoked_at is not None or (grant.expires_at and grant.expires_at <= now)):
        grant = None  # already over: nothing to revoke, and a new owner needs a new grant
    owner = None if revoke else owner_of(child)
    if grant is not None and grant.user_id != owner:
        if grant.revoked_at is None:
            grant.revoked_at = now
        grant = None
    if owner is None:
        return None
    if grant is None:
        grant = AccessGrant(user_id=owner, kind=child.kind, case_id=child.parent_case_id, study_uid="",
                            include_priors=True, reason=f"{child.kind} (case {child.id})", granted_by=granted_by,
                            created_at=now, expires_at=expires_at)
        session.add(grant)
        session.flush()
    elif expires_at is not None:
        grant.expires_at = expires_at
    return grant.id


def revoke_grant(session: Session, grant_id: int | None) -> None:
    """End a grant now (a cancelled child, a consult whose grace period is cut short)."""
    if grant_id is not None:
        session.execute(update(AccessGrant).where(AccessGrant.id == grant_id, AccessGrant.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))


def user_named(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username, User.active.is_(True))).first()
    if user is None:
        raise ChildError(f"no active user {username!r}")
    return user


def username_of(session: Session, user_id: int | None) -> str:
    if user_id is None:
        return ""
    return session.scalar(select(User.username).where(User.id == user_id)) or ""
