"""Consults, second opinions and second reads: ask about a case, route the question, record the answer.

Each request is a child case (collab.children) routed by the worklist's engine: by the requested
subspecialty (the rules' own requirements still apply) or pushed to a named expert, with its own
priority and SLA. The reader who asked and, for a second opinion or second read, the reader of the
case, are kept away from it as conflicts. The one who takes it gets an access grant to the parent
case and its priors; after answering it lasts ``consult_access_grace_hours`` more (time to answer
follow-up questions), then ends. Every step is an event on the child and on the parent
(``consult.requested``, ``consult.answered``, ``consult.cancelled``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.children import (
    ChildError,
    create_child,
    revoke_grant,
    sync_grant,
    user_named,
    username_of,
)
from readingroom.collab.consults_models import Consult
from readingroom.db import Base
from readingroom.workflow.cases import SYSTEM, Actor, claim, get_case, log_event, transition
from readingroom.workflow.models import Case, CaseCandidate, ReaderProfile
from readingroom.workflow.states import CaseState, NotEligible

CONSULT_KINDS = ("consult", "second_opinion", "second_read")


class ConsultNotFound(LookupError):
    """No consult with that (child) case id: HTTP 404."""


@dataclass(frozen=True)
class ConsultRequest:
    """What the requester asks: the question, whom (a subspecialty pool or a named expert), how fast."""

    question: str
    kind: str = "consult"
    subspecialty: str = ""
    expert: str = ""
    priority: str = "routine"
    sla_minutes: float | None = None


def request_consult(session: Session, parent_case_id: int, req: ConsultRequest, actor: Actor, *,
                    cache_key: str = "", dedupe_key: str | None = None) -> Consult:
    """Create the consult and its child case, route it, and give its owner (if pushed) access now."""
    if req.kind not in CONSULT_KINDS:
        raise ChildError(f"unknown consult kind {req.kind!r}; one of {', '.join(CONSULT_KINDS)}")
    parent = get_case(session, parent_case_id)
    if parent.state == CaseState.CANCELLED.value:
        raise ChildError(f"case {parent_case_id} is cancelled")
    exclude = {actor.name} if actor.user_id is not None else set()
    if req.kind in ("second_opinion", "second_read") and parent.claimed_by is not None:
        exclude.add(username_of(session, parent.claimed_by))
    expert_id = None
    if req.expert:
        user = user_named(session, req.expert)
        if user.username in exclude:
            raise ChildError(f"{user.username} cannot give this {req.kind}: they asked for it or read the case")
        if session.scalar(select(ReaderProfile.id).where(ReaderProfile.user_id == user.id)) is None:
            raise ChildError(f"{user.username} has no reader profile: an administrator records their licences and "
                             f"credentials (PUT /api/v1/readers/{user.username}) before they can be asked")
        expert_id = user.id
    request: dict[str, Any] = {"exclude": sorted(x for x in exclude if x)}
    if req.subspecialty:
        request["subspecialties"] = [req.subspecialty.strip().lower()]
    if req.expert:
        request["readers"] = [req.expert]
    if req.sla_minutes:
        request["sla_minutes"] = req.sla_minutes
    summary = {"question": req.question, "subspecialty": req.subspecialty, "expert": req.expert}
    child = create_child(session, parent, req.kind, priority=req.priority, actor=actor, routing_request=request,
                         data=summary, cache_key=cache_key)
    consult = Consult(kind=req.kind, parent_case_id=parent.id, child_case_id=child.id, dedupe_key=dedupe_key,
                      question=req.question, subspecialty=req.subspecialty.strip().lower(),
                      expert_user_id=expert_id, priority=child.priority, requested_by=actor.name,
                      requested_by_id=actor.user_id, requested_at=utcnow(), state="open")
    session.add(consult)
    session.flush()
    consult.grant_id = sync_grant(session, grant_id=None, child=child, granted_by=actor.name)
    log_event(session, parent.id, "consult.requested", actor, parent.state, parent.state,
              {"consult_id": consult.id, "kind": req.kind, "child_case_id": child.id, "priority": child.priority,
               "subspecialty": consult.subspecialty, "expert": req.expert, "child_state": child.state})
    return consult


def request_second_read(session: Session, parent_case_id: int, *, cache_key: str = "") -> Consult | None:
    """The second read of a final case whose rules require one; None if it already exists (exactly once)."""
    key = f"second_read:{parent_case_id}"
    if session.scalar(select(Consult.id).where(Consult.dedupe_key == key)) is not None:
        return None
    try:
        with session.begin_nested():
            return request_consult(session, parent_case_id, ConsultRequest(
                question="Second read required by the routing rules: read independently and record whether "
                         "you agree with the final report.", kind="second_read"),
                SYSTEM, cache_key=cache_key, dedupe_key=key)
    except IntegrityError:
        return None  # another process made it first


def get_consult(session: Session, child_case_id: int) -> Consult:
    consult = session.scalars(select(Consult).where(Consult.child_case_id == child_case_id)).first()
    if consult is None:
        raise ConsultNotFound(f"case {child_case_id} is not a consult")
    return consult


def accept(session: Session, consult: Consult, actor: Actor) -> Consult:
    """Take the consult (claim its case) and receive access to the parent case at once."""
    child = get_case(session, consult.child_case_id)
    if consult.state != "open":
        raise NotEligible(f"consult {child.id} is {consult.state}")
    if child.claimed_by != actor.user_id:
        child = claim(session, child.id, actor)
    consult.grant_id = sync_grant(session, grant_id=consult.grant_id, child=child, granted_by="consults")
    return consult


def answer(session: Session, consult: Consult, actor: Actor, text: str, *, agrees: bool | None = None,
           grace_hours: float = 24.0) -> Consult:
    """Record the answer, complete the child case, log it on the parent, start the access grace period."""
    if consult.state != "open":
        raise NotEligible(f"consult {consult.child_case_id} is already {consult.state}")
    child = get_case(session, consult.child_case_id)
    if child.claimed_by != actor.user_id:
        accept(session, consult, actor)
    now = utcnow()
    transition(session, child.id, "completed", actor, data={"consult_id": consult.id, "agrees": agrees})
    consult.state, consult.answer, consult.agrees = "answered", text, agrees
    consult.answered_by, consult.answered_by_id, consult.answered_at = actor.name, actor.user_id, now
    consult.report_id = report_id_for(session, consult.parent_case_id)
    child = get_case(session, child.id)
    consult.grant_id = sync_grant(session, grant_id=consult.grant_id, child=child, granted_by="consults",
                                  expires_at=now + timedelta(hours=grace_hours))
    parent = get_case(session, consult.parent_case_id)
    log_event(session, parent.id, "consult.answered", actor, parent.state, parent.state,
              {"consult_id": consult.id, "kind": consult.kind, "child_case_id": child.id, "agrees": agrees,
               "report_id": consult.report_id}, now)
    return consult


def report_id_for(session: Session, case_id: int) -> int | None:
    """The id of the parent case's report, if the reports module has written one.

    Looked up through the shared metadata rather than the reports module's classes, so a consult
    answer links to the report whenever one exists, without the two modules depending on each other.
    """
    table = Base.metadata.tables.get("reports")
    if table is None or "case_id" not in table.c:
        return None
    return session.scalar(select(table.c.id).where(table.c.case_id == case_id).order_by(table.c.id.desc()).limit(1))


def consults_of_case(session: Session, parent_case_id: int) -> list[Consult]:
    """Every consult asked about a case, oldest first (the report lists the answered ones)."""
    return list(session.scalars(select(Consult).where(Consult.parent_case_id == parent_case_id)
                                .order_by(Consult.id)))


def answers_for_case(session: Session, parent_case_id: int) -> list[Consult]:
    """The answered consults of a case: what a report shows under "consultations"."""
    return [c for c in consults_of_case(session, parent_case_id) if c.state == "answered"]


def my_consults(session: Session, user_id: int, *, open_only: bool = False) -> list[tuple[Consult, Case]]:
    """Consults asked of the user (owner or candidate of the child) or requested by them."""
    asked = or_(Case.assignee == user_id, Case.claimed_by == user_id,
                and_(Case.assignee.is_(None), exists().where(CaseCandidate.case_id == Case.id,
                                                             CaseCandidate.user_id == user_id)))
    q = (select(Consult, Case).join(Case, Case.id == Consult.child_case_id)
         .where(or_(asked, Consult.requested_by_id == user_id)).order_by(Consult.id.desc()).limit(500))
    if open_only:
        q = q.where(Consult.state == "open")
    return [(c, k) for c, k in session.execute(q).all()]


def reconcile(session: Session) -> int:
    """Keep grants in step with the children's owners (claims via the worklist, reassignments, cancels).

    Returns how many consults changed. Run by the scheduler; idempotent and safe in several processes
    (each change is small and the grant row is the only thing written).
    """
    changed = 0
    rows = session.execute(select(Consult, Case).join(Case, Case.id == Consult.child_case_id)
                           .where(Consult.state == "open")).all()
    for consult, child in rows:
        if child.state == CaseState.CANCELLED.value:
            revoke_grant(session, consult.grant_id)
            consult.state = "cancelled"
            parent = get_case(session, consult.parent_case_id)
            log_event(session, parent.id, "consult.cancelled", SYSTEM, parent.state, parent.state,
                      {"consult_id": consult.id, "child_case_id": child.id})
            changed += 1
            continue
        before = consult.grant_id
        consult.grant_id = sync_grant(session, grant_id=consult.grant_id, child=child, granted_by="consults")
        changed += before != consult.grant_id
    return changed

