"""REST edge of consults, second opinions and second reads (thin: parse, authorise, call collab.consults).

A consult is addressed by its own case id (the child case on the consultant's worklist); the case it
asks about is ``parent_case_id``. Every route needs its action *and* a relationship to the case.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.collab import live
from readingroom.collab.children import ChildError, username_of
from readingroom.collab.consults import (
    ConsultNotFound,
    ConsultRequest,
    accept,
    answer,
    consults_of_case,
    get_consult,
    my_consults,
    request_consult,
)
from readingroom.collab.consults_models import Consult
from readingroom.governance import policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor, CaseNotFound
from readingroom.workflow.models import Case, CaseEvent
from readingroom.workflow.states import IllegalTransition, NotEligible

router = APIRouter(tags=["consults"])
Requester = Annotated[Principal, Depends(require(policy.CONSULTS_REQUEST))]
Answerer = Annotated[Principal, Depends(require(policy.CONSULTS_ANSWER))]
ERRORS: dict[int | str, dict[str, Any]] = {
    409: error_response("The consult or its case is not in a state that allows this (answered, claimed by "
                        "someone else, cancelled)"),
}


class ConsultIn(BaseModel):
    question: str = Field(min_length=1, max_length=20_000, description="What the consultant is asked")
    kind: Literal["consult", "second_opinion"] = "consult"
    subspecialty: str = Field("", max_length=64, description="Route to readers of this subspecialty (e.g. neuro)")
    expert: str = Field("", max_length=64, description="Username of a named expert (pushed to them)")
    priority: Literal["critical", "stat", "urgent", "routine"] = "routine"
    sla_minutes: float | None = Field(None, gt=0, le=60 * 24 * 90, description="Own SLA; default: the rules' "
                                      "SLA for the priority")


class AnswerIn(BaseModel):
    text: str = Field(min_length=1, max_length=100_000)
    agrees: bool | None = Field(None, description="Second reads and opinions: agreement with the final report")


class ConsultOut(BaseModel):
    id: int
    case_id: int = Field(description="The consult's own case (on the consultant's worklist)")
    parent_case_id: int
    kind: str
    question: str
    subspecialty: str
    expert: str
    priority: str
    state: str = Field(description="open, answered or cancelled")
    case_state: str
    deadline: datetime | None
    assignee: str
    routing_summary: str
    requested_by: str
    requested_at: datetime
    answer: str
    agrees: bool | None
    answered_by: str
    answered_at: datetime | None
    report_id: int | None


def _out(s: Session, c: Consult, child: Case | None = None) -> ConsultOut:
    child = child or s.get(Case, c.child_case_id)
    assert child is not None
    summary = s.scalar(select(CaseEvent.data).where(CaseEvent.case_id == child.id,
                                                    CaseEvent.kind.in_(("routed", "unroutable")))
                       .order_by(CaseEvent.id.desc()).limit(1)) or {}
    return ConsultOut(id=c.id, case_id=c.child_case_id, parent_case_id=c.parent_case_id, kind=c.kind,
                      question=c.question, subspecialty=c.subspecialty, expert=username_of(s, c.expert_user_id),
                      priority=c.priority, state=c.state, case_state=child.state, deadline=child.deadline,
                      assignee=username_of(s, child.claimed_by or child.assignee),
                      routing_summary=str(summary.get("summary", "")), requested_by=c.requested_by,
                      requested_at=c.requested_at, answer=c.answer, agrees=c.agrees, answered_by=c.answered_by,
                      answered_at=c.answered_at, report_id=c.report_id)


def _visible(s: Session, p: Principal, case_id: int) -> Case:
    case = s.get(Case, case_id)
    if case is None or not policy.can_see_case(s, p, case):
        raise HTTPException(404, f"no case {case_id} you may see")
    return case


def _actor(p: Principal) -> Actor:
    return Actor(name=p.username, user_id=p.user_id)


def _act(rt: Runtime, p: Principal, case_id: int, fn: Callable[[Session, Consult], Any]) -> ConsultOut:
    """Run one change on a consult the caller may see; map domain refusals to 4xx; publish after commit."""
    try:
        with rt.db.session() as s:
            _visible(s, p, case_id)
            consult = get_consult(s, case_id)
            fn(s, consult)
            out = _out(s, consult)
    except (ConsultNotFound, CaseNotFound) as exc:
        raise HTTPException(404, str(exc)) from exc
    except NotEligible as exc:
        raise HTTPException(403, str(exc)) from exc
    except IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from exc
    except ChildError as exc:
        raise HTTPException(422, str(exc)) from exc
    policy.forget_decisions()
    live.publish(rt, f"consult.{out.state}", {"consult_id": out.id, "consult_case_id": out.case_id},
                 case_id=out.parent_case_id)
    return out


@router.post("/cases/{case_id}/consults", response_model=ConsultOut, status_code=201,
             responses={422: error_response("The request cannot be routed as asked (unknown or unqualified "
                                            "expert, cancelled case, a consult of a consult)")})
def ask(case_id: int, body: ConsultIn, rt: RuntimeDep, p: Requester) -> ConsultOut:
    """Ask for a consult or second opinion on a case: routed by subspecialty, or pushed to a named expert."""
    req = ConsultRequest(question=body.question, kind=body.kind, subspecialty=body.subspecialty,
                         expert=body.expert, priority=body.priority, sla_minutes=body.sla_minutes)
    try:
        with rt.db.session() as s:
            _visible(s, p, case_id)
            consult = request_consult(s, case_id, req, _actor(p), cache_key=rt.db.url)
            out = _out(s, consult)
            child = s.get(Case, consult.child_case_id)
            owner = child.assignee if child is not None else None
    except ChildError as exc:
        raise HTTPException(422, str(exc)) from exc
    policy.forget_decisions()
    live.publish(rt, "consult.requested", {"consult_id": out.id, "consult_case_id": out.case_id},
                 case_id=case_id, user_ids=[owner] if owner else ())
    live.publish(rt, "case.changed", {"state": out.case_state}, case_id=out.case_id)
    return out


@router.get("/cases/{case_id}/consults", response_model=list[ConsultOut])
def of_case(case_id: int, rt: RuntimeDep, p: PrincipalDep) -> list[ConsultOut]:
    """The consults, second opinions and second reads asked about a case, with their answers."""
    with rt.db.read_session() as s:
        _visible(s, p, case_id)
        return [_out(s, c) for c in consults_of_case(s, case_id)]


@router.get("/consults", response_model=list[ConsultOut])
def mine(rt: RuntimeDep, p: PrincipalDep,
         open_only: Annotated[bool, Query(description="Only consults still waiting for an answer")] = False,
         ) -> list[ConsultOut]:
    """Consults asked of the caller (offered, pushed or claimed) and the ones the caller asked."""
    with rt.db.read_session() as s:
        return [_out(s, c, k) for c, k in my_consults(s, p.user_id, open_only=open_only)]


@router.get("/consults/{case_id}", response_model=ConsultOut)
def one(case_id: int, rt: RuntimeDep, p: PrincipalDep) -> ConsultOut:
    """One consult, by its case id."""
    with rt.db.read_session() as s:
        _visible(s, p, case_id)
        try:
            return _out(s, get_consult(s, case_id))
        except ConsultNotFound as exc:
            raise HTTPException(404, str(exc)) from exc


@router.post("/consults/{case_id}/accept", response_model=ConsultOut, responses=ERRORS)
def take(case_id: int, rt: RuntimeDep, p: Answerer) -> ConsultOut:
    """Take a consult offered to you (claim it); access to the case asked about starts now."""
    return _act(rt, p, case_id, lambda s, c: accept(s, c, _actor(p)))


@router.post("/consults/{case_id}/answer", response_model=ConsultOut, responses=ERRORS)
def give_answer(case_id: int, body: AnswerIn, rt: RuntimeDep, p: Answerer) -> ConsultOut:
    """Answer a consult; it is recorded on the case asked about and linked to its report."""
    grace = rt.settings.consult_access_grace_hours
    return _act(rt, p, case_id, lambda s, c: answer(s, c, _actor(p), body.text, agrees=body.agrees,
                                                    grace_hours=grace))
