"""REST edge of conferences (tumour boards / MDT): sessions, their shared case list, attendance, decisions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.collab import conferences as conf_svc
from readingroom.collab import live
from readingroom.collab.conference_access import AccessWindow
from readingroom.collab.conferences import ConferenceKind, NewConference, Outcome
from readingroom.collab.conferences_models import Conference, ConferenceAttendee, ConferenceCase
from readingroom.collab.refusals import Refused
from readingroom.governance import audit, policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site, User
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case

router = APIRouter(tags=["conferences"])
Manager = Annotated[Principal, Depends(require(policy.CONFERENCES_MANAGE))]
CONFLICT: dict[int | str, dict[str, Any]] = {409: error_response("Not possible now (duplicate, or outside the "
                                                                 "session's time)")}
T = TypeVar("T")


class ConferenceIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    site: str = Field(min_length=1, max_length=32, description="Code of the site that holds the session")
    kind: ConferenceKind = ConferenceKind.TUMOUR_BOARD
    scheduled_start: AwareDatetime
    scheduled_end: AwareDatetime
    chair: str | None = Field(default=None, max_length=64, description="Username of the chair (default: you)")


class ConferenceOut(BaseModel):
    id: int
    title: str
    kind: str
    site: str
    scheduled_start: datetime
    scheduled_end: datetime
    chair: str
    organiser: str
    access_from: datetime
    access_until: datetime


class AttendeeOut(BaseModel):
    username: str
    full_name: str
    external: bool
    checked_in_at: datetime | None


class ListedCaseOut(BaseModel):
    position: int
    case_id: int
    question: str
    added_by: str
    presented_at: datetime | None
    decision_outcome: str
    decision_text: str
    decided_by: str
    decided_at: datetime | None
    #: Patient and study details only for cases the caller may open now (the grant window is open).
    visible: bool = False
    state: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    modality: str | None = None
    description: str | None = None


class ConferenceDetail(ConferenceOut):
    attendees: list[AttendeeOut]
    cases: list[ListedCaseOut]


class ListedCaseIn(BaseModel):
    case_id: int = Field(ge=1)
    question: str = Field(min_length=1, max_length=4000)


class AttendeeIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)


class DecisionIn(BaseModel):
    outcome: Outcome
    text: str = Field(min_length=1, max_length=20000)


def _run(rt: Runtime, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction; a refusal rolls everything back and becomes its HTTP status."""
    try:
        with rt.db.session() as s:
            return work(s)
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def _window(rt: Runtime) -> AccessWindow:
    return AccessWindow.from_settings(rt.settings)


def _out(s: Session, conf: Conference, window: AccessWindow) -> ConferenceOut:
    names = {row.id: row.username for row in s.execute(select(User.id, User.username)
                                                       .where(User.id.in_([conf.chair_id, conf.created_by])))}
    site = s.get(Site, conf.site_id)
    return ConferenceOut(id=conf.id, title=conf.title, kind=conf.kind, site=site.code if site else "",
                         scheduled_start=conf.scheduled_start, scheduled_end=conf.scheduled_end,
                         chair=names.get(conf.chair_id, ""), organiser=names.get(conf.created_by, ""),
                         access_from=window.opens(conf), access_until=window.closes(conf))


def _attendee_out(row: ConferenceAttendee, user: User) -> AttendeeOut:
    return AttendeeOut(username=user.username, full_name=user.full_name, external=row.external,
                       checked_in_at=row.checked_in_at)


def _listed_out(s: Session, p: Principal, item: ConferenceCase, case: Any) -> ListedCaseOut:
    out = ListedCaseOut(position=item.position, case_id=item.case_id, question=item.question, added_by=item.added_by,
                        presented_at=item.presented_at, decision_outcome=item.decision_outcome,
                        decision_text=item.decision_text, decided_by=item.decided_by, decided_at=item.decided_at)
    if policy.can_see_case(s, p, case):
        row = s.execute(select(Study.study_uid, Patient.patient_id, Patient.name)
                        .join(Patient, Patient.id == Study.patient_pk).where(Study.id == case.study_pk)).first()
        out.visible, out.state, out.modality, out.description = True, case.state, case.modality, case.description
        if row is not None:
            out.study_uid, out.patient_id, out.patient_name = row
        elif case.order_fields:
            out.patient_id = case.order_fields.get("patient_id")
            out.patient_name = case.order_fields.get("patient_name")
    return out


def _publish(rt: Runtime, kind: str, conference_id: int, data: dict[str, Any], case_id: int | None = None) -> None:
    with rt.db.read_session() as s:
        users = conf_svc.attendee_ids(s, conference_id)
        conf = s.get(Conference, conference_id)
        if conf is not None:
            users += [conf.chair_id, conf.created_by]
    live.publish(rt, kind, {"conference_id": conference_id, **data}, case_id=case_id, user_ids=set(users))


@router.post("/conferences", response_model=ConferenceOut, status_code=201)
def create_conference(body: ConferenceIn, rt: RuntimeDep, p: Manager) -> ConferenceOut:
    """Schedule a session at a site where you may organise conferences; the chair attends it."""
    window = _window(rt)

    def work(s: Session) -> ConferenceOut:
        site = s.scalars(select(Site).where(Site.code == body.site)).first()
        if site is None:
            raise Refused("invalid", f"no site {body.site!r}")
        conf = conf_svc.create(s, p, NewConference(body.title, site.id, body.scheduled_start, body.scheduled_end,
                                                   body.kind, body.chair), window)
        return _out(s, conf, window)

    out = _run(rt, work)
    policy.forget_decisions()
    _publish(rt, "conference.scheduled", out.id, {"title": out.title})
    return out


@router.get("/conferences", response_model=list[ConferenceOut])
def list_conferences(rt: RuntimeDep, p: PrincipalDep, include_past: bool = False) -> list[ConferenceOut]:
    """Sessions you attend, organise or supervise (by start; past sessions with ``include_past``)."""
    window = _window(rt)
    with rt.db.read_session() as s:
        confs = conf_svc.visible_list(s, p, since=None if include_past else utcnow())
        return [_out(s, c, window) for c in confs]


@router.get("/conferences/{conference_id}", response_model=ConferenceDetail)
def conference_detail(conference_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request) -> ConferenceDetail:
    """The shared, ordered case list every attendee sees, with questions, decisions and attendance."""
    window = _window(rt)
    try:
        with rt.db.read_session() as s:
            conf = conf_svc.get(s, p, conference_id)
            listed = [_listed_out(s, p, item, case) for item, case in conf_svc.cases_of(s, conf.id)]
            detail = ConferenceDetail(**_out(s, conf, window).model_dump(), cases=listed, attendees=[
                _attendee_out(row, user) for row, user in conf_svc.attendees_of(s, conf.id)])
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    shown = [c for c in listed if c.visible]
    if shown:
        audit.record_soon(rt.db, actor=p.username, action="conference.read", resource_type="conference",
                          resource_id=str(conference_id), source=request.client.host if request.client else "",
                          detail={"cases": [c.case_id for c in shown]})
    return detail


@router.post("/conferences/{conference_id}/cases", response_model=ListedCaseOut, status_code=201,
             responses=CONFLICT)
def add_case(conference_id: int, body: ListedCaseIn, rt: RuntimeDep, p: Manager) -> ListedCaseOut:
    """Put a case you can see on the session's list, with the question for the board."""
    window = _window(rt)

    def work(s: Session) -> ListedCaseOut:
        item = conf_svc.add_case(s, p, conference_id, body.case_id, body.question, window)
        return _listed_out(s, p, item, s.get(Case, item.case_id))

    out = _run(rt, work)
    policy.forget_decisions()
    _publish(rt, "conference.case_added", conference_id, {"position": out.position}, case_id=body.case_id)
    return out


@router.post("/conferences/{conference_id}/attendees", response_model=AttendeeOut, status_code=201,
             responses=CONFLICT)
def add_attendee(conference_id: int, body: AttendeeIn, rt: RuntimeDep, p: Manager) -> AttendeeOut:
    """Invite a person, of any site or partner organisation; their access to the cases follows the window."""
    window = _window(rt)

    def work(s: Session) -> AttendeeOut:
        row = conf_svc.add_attendee(s, p, conference_id, body.username, window)
        return _attendee_out(row, s.get(User, row.user_id))  # type: ignore[arg-type]

    out = _run(rt, work)
    policy.forget_decisions()
    _publish(rt, "conference.attendee_added", conference_id, {"username": out.username})
    return out


@router.post("/conferences/{conference_id}/check-in", response_model=AttendeeOut, responses=CONFLICT)
def check_in(conference_id: int, rt: RuntimeDep, p: PrincipalDep) -> AttendeeOut:
    """Record your attendance (from an hour before the start; the first check-in counts)."""
    window = _window(rt)

    def work(s: Session) -> AttendeeOut:
        row = conf_svc.check_in(s, p, conference_id, window)
        return _attendee_out(row, s.get(User, row.user_id))  # type: ignore[arg-type]

    out = _run(rt, work)
    _publish(rt, "conference.checked_in", conference_id, {"username": out.username})
    return out


@router.post("/conferences/{conference_id}/cases/{case_id}/presented", response_model=ListedCaseOut,
             responses=CONFLICT)
def presented(conference_id: int, case_id: int, rt: RuntimeDep, p: Manager) -> ListedCaseOut:
    """The chair marks a case as presented (case event ``conference.presented``)."""
    out = _run(rt, lambda s: _listed_out(s, p, conf_svc.mark_presented(s, p, conference_id, case_id),
                                         s.get(Case, case_id)))
    _publish(rt, "conference.presented", conference_id, {"position": out.position}, case_id=case_id)
    return out


@router.post("/conferences/{conference_id}/cases/{case_id}/decision", response_model=ListedCaseOut,
             responses=CONFLICT)
def decision(conference_id: int, case_id: int, body: DecisionIn, rt: RuntimeDep, p: Manager) -> ListedCaseOut:
    """The chair records the board's decision for a case (case event ``conference.decision``; may be revised)."""
    out = _run(rt, lambda s: _listed_out(s, p, conf_svc.record_decision(s, p, conference_id, case_id, body.text,
                                                                        body.outcome),
                                         s.get(Case, case_id)))
    _publish(rt, "conference.decision", conference_id, {"outcome": out.decision_outcome}, case_id=case_id)
    return out
