"""REST edge of critical results: flag, the closed-loop record, acknowledge, levels, one's delegate."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from readingroom.api_errors import error_response
from readingroom.collab import critical, live
from readingroom.collab.critical_delegation import (
    DelegationError,
    clear_delegation,
    get_delegation,
    set_delegation,
)
from readingroom.collab.critical_models import CriticalResult
from readingroom.governance import audit, policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.models import User
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor
from readingroom.workflow.models import Case

router = APIRouter(tags=["critical results"])
Writer = Annotated[Principal, Depends(require(policy.REPORTS_WRITE))]
Acknowledger = Annotated[Principal, Depends(require(policy.CRITICAL_ACK))]
NO_CASE = "no relationship to this case (not routed to you, not your site, not your order, no grant)"


class FlagIn(BaseModel):
    category: str = Field(min_length=1, max_length=64, description="e.g. pneumothorax, intracranial haemorrhage")
    level: str = Field(description="Urgency level code (GET /critical-levels), e.g. '1' for critical")
    finding: str = Field(min_length=1, max_length=10_000, description="What was found, for the clinician")


class AckIn(BaseModel):
    note: str = Field(default="", max_length=2_000, description="e.g. 'patient recalled to ED'")


class LevelOut(BaseModel):
    code: str
    name: str
    ack_minutes: float


class NotificationOut(BaseModel):
    step: int
    role: str = Field(description="clinician, delegate or supervisor")
    channel: str = Field(description="live, webhook, log; none when the step had nobody to tell")
    recipient: str
    at: datetime
    outcome: str = Field(description="streamed, not_connected, sent, failed, logged, no_recipient (or pending)")
    detail: str


class CriticalOut(BaseModel):
    id: int
    case_id: int
    category: str
    level: str
    level_name: str
    finding: str
    flagged_by: str
    clinician_name: str
    clinician: str | None
    state: str = Field(description="open or acknowledged")
    created_at: datetime
    ack_deadline: datetime
    overdue: bool
    escalation_step: int
    next_escalation_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_note: str


class CriticalRecord(CriticalOut):
    """The closed loop: the result, every notification (who, channel, when, outcome) and the acknowledgement."""

    notifications: list[NotificationOut]


class DelegationIn(BaseModel):
    delegate: str = Field(min_length=1, max_length=64, description="Username of the colleague acting for you")
    valid_from: AwareDatetime | None = Field(default=None, description="With a time zone; default: now")
    valid_until: AwareDatetime | None = Field(default=None, description="With a time zone; default: until removed")
    reason: str = Field(default="", max_length=500)


class DelegationOut(BaseModel):
    delegate: str | None = Field(description="None when no delegate is set")
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    reason: str = ""
    active: bool = False


def _out(s: Any, rt: Runtime, r: CriticalResult) -> CriticalOut:
    clinician = s.get(User, r.clinician_id) if r.clinician_id else None
    return CriticalOut(
        id=r.id, case_id=r.case_id, category=r.category, level=r.level, finding=r.finding,
        flagged_by=r.flagged_by_name, clinician_name=r.clinician_name,
        clinician=clinician.username if clinician else None, state=r.state, created_at=r.created_at,
        ack_deadline=r.ack_deadline, escalation_step=r.escalation_step, next_escalation_at=r.next_escalation_at,
        acknowledged_by=r.acknowledged_by_name or None, acknowledged_at=r.acknowledged_at, ack_note=r.ack_note,
        **critical.summary(r, rt.settings))


def _case(s: Any, case_id: int, p: Principal) -> Case:
    case = s.get(Case, case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    if not policy.can_see_case(s, p, case):
        raise HTTPException(403, NO_CASE)
    return case


def _result(s: Any, result_id: int, p: Principal) -> tuple[CriticalResult, Case]:
    """The result, if the caller may see its case or was told of it (a delegate need not see the case yet)."""
    result = s.get(CriticalResult, result_id)
    if result is None:
        raise HTTPException(404, f"no critical result {result_id}")
    case = s.get(Case, result.case_id)
    if case is None or not (policy.can_see_case(s, p, case) or critical.may_acknowledge(s, p, result)):
        raise HTTPException(403, NO_CASE)
    return result, case


def _read_audit(rt: Runtime, s: Any, p: Principal, request: Request, case: Case, what: str, rid: str) -> None:
    from readingroom.archive.models import Patient

    pid = s.scalar(select(Patient.patient_id).where(Patient.id == case.patient_pk)) if case.patient_pk else ""
    audit.record_soon(rt.db, actor=p.username, source=request.client.host if request.client else "",
                      action=what, resource_type="critical_result", resource_id=rid, patient_id=pid or "")


@router.get("/critical-levels", response_model=list[LevelOut])
def list_levels(rt: RuntimeDep, _p: PrincipalDep) -> list[LevelOut]:
    """The urgency levels and how long each allows to acknowledge (settings ``critical_ack_minutes``)."""
    return [LevelOut(code=v.code, name=v.name, ack_minutes=v.ack_minutes)
            for v in critical.levels(rt.settings).values()]


@router.post("/cases/{case_id}/critical-results", response_model=CriticalRecord, status_code=201)
def flag_result(case_id: int, body: FlagIn, rt: RuntimeDep, p: Writer) -> CriticalRecord:
    """Flag a critical finding: the ordering clinician is told at once (live stream, webhook, log) and must
    acknowledge within the level's time, else the result escalates to their delegate, then supervisors."""
    try:
        with rt.db.session() as s:
            case = _case(s, case_id, p)
            out = critical.flag(s, rt.settings, case, Actor(p.username, p.user_id), category=body.category,
                                level=body.level, finding=body.finding)
    except critical.CriticalError as exc:
        raise HTTPException(422, str(exc)) from exc
    critical.deliver(rt, out)
    live.publish(rt, "critical.flagged", {"critical_id": out.result_id, "level": body.level}, case_id=case_id)
    return _record(rt, out.result_id)


def _record(rt: Runtime, result_id: int) -> CriticalRecord:
    with rt.db.read_session() as s:
        result = critical.get_result(s, result_id)
        notes = [NotificationOut.model_validate(n, from_attributes=True)
                 for n in critical.notifications(s, result_id)]
        return CriticalRecord(**_out(s, rt, result).model_dump(), notifications=notes)


@router.get("/cases/{case_id}/critical-results", response_model=list[CriticalOut])
def case_results(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request) -> list[CriticalOut]:
    """The critical results of one case, oldest first."""
    with rt.db.read_session() as s:
        case = _case(s, case_id, p)
        found = [_out(s, rt, r) for r in critical.for_case(s, case_id)]
        _read_audit(rt, s, p, request, case, "critical.list", f"case:{case_id}")
    return found


@router.get("/critical-results", response_model=list[CriticalOut])
def my_results(rt: RuntimeDep, p: PrincipalDep, open_only: bool = True) -> list[CriticalOut]:
    """Results addressed to the caller (as clinician or along the escalation ladder), newest first."""
    with rt.db.read_session() as s:
        return [_out(s, rt, r) for r in critical.addressed_to(s, p.user_id, open_only)]


@router.get("/critical-results/{result_id}", response_model=CriticalRecord)
def read_result(result_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request) -> CriticalRecord:
    """The closed-loop record: who was told, by which channel, when, with what outcome; who acknowledged, when."""
    with rt.db.read_session() as s:
        _, case = _result(s, result_id, p)
        _read_audit(rt, s, p, request, case, "critical.read", str(result_id))
    return _record(rt, result_id)


@router.post("/critical-results/{result_id}/acknowledge", response_model=CriticalRecord,
             responses={409: error_response("Already acknowledged")})
def acknowledge_result(result_id: int, rt: RuntimeDep, p: Acknowledger, body: AckIn | None = None) -> CriticalRecord:
    """Acknowledge receipt (the clinician, their delegate, or an escalation recipient): stops escalation."""
    try:
        with rt.db.session() as s:
            result, case = _result(s, result_id, p)
            result = critical.acknowledge(s, result_id, p, body.note if body else "")
            flagged_by = result.flagged_by
    except critical.NotRecipient as exc:
        raise HTTPException(403, str(exc)) from exc
    except critical.AlreadyAcknowledged as exc:
        raise HTTPException(409, str(exc)) from exc
    live.publish(rt, "critical.acknowledged", {"critical_id": result_id, "by": p.username}, case_id=case.id,
                 user_ids=[flagged_by] if flagged_by else [])
    return _record(rt, result_id)


# -- one's delegate -------------------------------------------------------------------------------------------


def _me(s: Any, p: Principal) -> User:
    user = s.get(User, p.user_id)
    if user is None:
        raise HTTPException(404, "no such account")
    return user


def _delegation_out(found: Any) -> DelegationOut:
    if found is None:
        return DelegationOut(delegate=None)
    return DelegationOut(delegate=found.delegate, valid_from=found.valid_from, valid_until=found.valid_until,
                         reason=found.reason, active=found.active)


@router.get("/me/critical-delegate", response_model=DelegationOut)
def my_delegate(rt: RuntimeDep, p: Acknowledger) -> DelegationOut:
    """Who acts for the caller on critical results (``delegate`` is null when nobody does)."""
    with rt.db.read_session() as s:
        return _delegation_out(get_delegation(s, _me(s, p)))


@router.put("/me/critical-delegate", response_model=DelegationOut)
def put_delegate(body: DelegationIn, rt: RuntimeDep, p: Acknowledger) -> DelegationOut:
    """Name (or replace) the colleague told when the caller misses a critical result; they may acknowledge it."""
    try:
        with rt.db.session() as s:
            return _delegation_out(set_delegation(s, _me(s, p), body.delegate, valid_from=body.valid_from,
                                                  valid_until=body.valid_until, reason=body.reason))
    except DelegationError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.delete("/me/critical-delegate", status_code=204, response_class=Response)
def delete_delegate(rt: RuntimeDep, p: Acknowledger) -> Response:
    """Stop delegating (idempotent)."""
    with rt.db.session() as s:
        clear_delegation(s, _me(s, p))
    return Response(status_code=204)
