"""REST edge of the worklist: cases, claims, routing rules, sites, readers, exceptions, AI findings."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from readingroom.api_errors import error_response
from readingroom.clock import utcnow
from readingroom.collab import live
from readingroom.governance import audit, policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site, User
from readingroom.governance.sites import create_site
from readingroom.workflow import exceptions as exq
from readingroom.workflow.ai import NoCaseForStudy, record_finding
from readingroom.workflow.cases import (
    Actor,
    CaseNotFound,
    NotEligible,
    case_events,
    claim,
    get_case,
    release,
    touch,
    transition,
)
from readingroom.workflow.dispatch import decide, route_case
from readingroom.workflow.models import Case, CaseCandidate, CasePrior, ExceptionItem
from readingroom.workflow.readers import ReaderError, get_reader, set_reader
from readingroom.workflow.rules import RulesError
from readingroom.workflow.rulestore import active_version, list_versions, replace_rules
from readingroom.workflow.states import IllegalTransition
from readingroom.workflow.worklist import WorklistFilter, all_cases, case_row, reader_worklist

router = APIRouter(tags=["worklist"])
#: The case is not in a state that allows this (claimed by someone else, already final, ...).
CONFLICT: dict[int | str, dict[str, Any]] = {409: error_response("Not possible in the case's current state")}
Reader = Annotated[Principal, Depends(require(policy.WORKLIST_READ))]
Supervisor = Annotated[Principal, Depends(require(policy.CASES_ADMIN))]
RulesAdmin = Annotated[Principal, Depends(require(policy.RULES_ADMIN))]
SitesAdmin = Annotated[Principal, Depends(require(policy.SITES_ADMIN))]
AiEngine = Annotated[Principal, Depends(require(policy.AI_FINDINGS))]


class CaseOut(BaseModel):
    id: int
    study_uid: str | None
    accession_number: str
    patient_name: str | None
    patient_id: str | None
    site: str | None
    modality: str
    body_part: str
    description: str
    priority: str
    priority_rank: int
    flags: list[str]
    state: str
    mode: str
    rule_id: str
    required_subspecialty: str
    assignee: int | None
    claimed_by: int | None
    deadline: datetime | None
    escalation_step: int
    version: int
    created_at: datetime
    kind: str = Field("read", description="read, or a child read: consult, second_opinion, second_read, peer_review")
    parent_case_id: int | None = Field(None, description="The case a child read is about")


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str
    from_state: str
    to_state: str
    data: dict[str, Any]


class CaseDetail(CaseOut):
    events: list[EventOut]
    priors: list[str]
    candidates: list[str]


def _case_out(row: Any) -> CaseOut:
    case, study_uid, name, pid, site = row
    return CaseOut(id=case.id, study_uid=study_uid, accession_number=case.accession_number, patient_name=name,
                   patient_id=pid, site=site, modality=case.modality, body_part=case.body_part,
                   description=case.description, priority=case.priority, priority_rank=case.priority_rank,
                   flags=case.flags or [], state=case.state, mode=case.mode, rule_id=case.rule_id,
                   required_subspecialty=case.required_subspecialty, assignee=case.assignee,
                   claimed_by=case.claimed_by, deadline=case.deadline, escalation_step=case.escalation_step,
                   version=case.version, created_at=case.created_at, kind=case.kind,
                   parent_case_id=case.parent_case_id)


def _actor(p: Principal) -> Actor:
    return Actor(name=p.username, user_id=p.user_id)


def _errors(exc: Exception) -> HTTPException:
    if isinstance(exc, CaseNotFound | NoCaseForStudy | exq.ExceptionNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, NotEligible):
        return HTTPException(403, str(exc))
    if isinstance(exc, IllegalTransition):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))


def _filters(priority: str | None = None, site: str | None = None, modality: str | None = None,
             subspecialty: str | None = None, state: str | None = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100,
             offset: Annotated[int, Query(ge=0)] = 0) -> WorklistFilter:
    return WorklistFilter(priority, site, modality, subspecialty, state, limit, offset)


Filters = Annotated[WorklistFilter, Depends(_filters)]


@router.get("/worklist", response_model=list[CaseOut])
def my_worklist(rt: RuntimeDep, p: Reader, f: Filters) -> list[CaseOut]:
    """The caller's worklist: cases routed to them and cases they claimed, by priority then deadline."""
    with rt.db.read_session() as s:
        return [_case_out(r) for r in reader_worklist(s, p.user_id, f)]


@router.get("/cases", response_model=list[CaseOut])
def list_cases(rt: RuntimeDep, p: Supervisor, f: Filters,
               open_only: bool = True) -> list[CaseOut]:
    """Every case in the network (admins) or of the sites the caller supervises (site admins)."""
    with rt.db.read_session() as s:
        return [_case_out(r) for r in all_cases(s, f, open_only=open_only, scope=policy.visible_cases(p))]


def _visible_case(s: Any, case_id: int, p: Principal) -> Case:
    case = s.get(Case, case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    if not policy.can_see_case(s, p, case):
        raise HTTPException(403, "no relationship to this case (not routed to you, not your site, no grant)")
    return case


def _supervised_case(s: Any, case_id: int, p: Principal) -> Case:
    """The case, if ``p`` supervises its site (else 404/403): site admins act only on their sites' cases."""
    case = s.get(Case, case_id)
    if case is None:
        raise CaseNotFound(f"no case {case_id}")
    if not policy.at_site(p, policy.CASES_ADMIN, case.site_id):
        raise HTTPException(403, "this case belongs to a site you do not supervise")
    return case


@router.get("/cases/{case_id}", response_model=CaseDetail)
def case_detail(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request) -> CaseDetail:
    """A case with its event log (timeline), priors and eligible readers."""
    from readingroom.archive.models import Study

    with rt.db.read_session() as s:
        case = _visible_case(s, case_id, p)
        base = _case_out(s.execute(case_row(case.id)).one())
        events = [EventOut.model_validate(e, from_attributes=True) for e in case_events(s, case_id)]
        priors = list(s.scalars(select(Study.study_uid).join(CasePrior, CasePrior.study_pk == Study.id)
                                .where(CasePrior.case_id == case_id)))
        candidates = list(s.scalars(select(User.username).join(CaseCandidate, CaseCandidate.user_id == User.id)
                                    .where(CaseCandidate.case_id == case_id).order_by(User.username)))
    audit.record_now(rt.db, actor=p.username, source=request.client.host if request.client else "",
                     action="case.read", resource_type="case", resource_id=str(case_id),
                     patient_id=base.patient_id or "")
    return CaseDetail(**base.model_dump(), events=events, priors=priors, candidates=candidates)


@router.post("/cases/{case_id}/claim", response_model=CaseOut, responses=CONFLICT)
def claim_case(case_id: int, rt: RuntimeDep, p: Reader) -> CaseOut:
    """Claim a case; exactly one reader succeeds, the others get 409."""
    def do(s: Any) -> Case:
        _visible_case(s, case_id, p)  # no relationship: 403, and nothing about the case's state
        return claim(s, case_id, _actor(p))
    return _act(rt, case_id, do)


class ReasonIn(BaseModel):
    reason: str = ""


@router.post("/cases/{case_id}/release", response_model=CaseOut, responses=CONFLICT)
def release_case(case_id: int, rt: RuntimeDep, p: Reader, body: ReasonIn | None = None) -> CaseOut:
    """Give a claimed case back to the pool."""
    return _act(rt, case_id, lambda s: release(s, case_id, _actor(p), reason=body.reason if body else ""))


@router.post("/cases/{case_id}/heartbeat", status_code=204, responses=CONFLICT)
def heartbeat(case_id: int, rt: RuntimeDep, p: Reader) -> None:
    """Activity on a claimed case, so the claim does not time out while the reader works."""
    with rt.db.session() as s:
        _visible_case(s, case_id, p)
        if not touch(s, case_id, p.user_id):
            raise HTTPException(409, "you do not hold a claim on this case")


@router.post("/cases/{case_id}/complete", response_model=CaseOut, responses=CONFLICT)
def complete_case(case_id: int, rt: RuntimeDep, p: Reader) -> CaseOut:
    """Mark a read done whose report lives elsewhere (RIS, dictation); a case with a report completes by
    signing it final (POST /cases/{id}/report/sign), so here it answers 409."""
    from readingroom.collab.reports import has_unsigned_report

    def do(s: Any) -> Case:
        case = get_case(s, case_id)
        if case.claimed_by != p.user_id:
            raise NotEligible("only the reader who claimed the case can complete it")
        if has_unsigned_report(s, case_id):
            raise IllegalTransition("completed", case.state, "this case has a report: sign it final to complete "
                                    "the read (POST /api/v1/cases/{id}/report/sign)")
        return transition(s, case_id, "completed", _actor(p))
    return _act(rt, case_id, do)


class ReassignIn(BaseModel):
    to: str = Field(description="username of the reader who takes the case")
    reason: str = Field(min_length=1)


@router.post("/cases/{case_id}/reassign", response_model=CaseOut, responses=CONFLICT)
def reassign_case(case_id: int, body: ReassignIn, rt: RuntimeDep, p: Supervisor) -> CaseOut:
    """A supervisor gives a case to a named reader, with a reason."""
    def do(s: Any) -> Case:
        _supervised_case(s, case_id, p)
        user = s.scalars(select(User).where(User.username == body.to)).first()
        if user is None:
            raise CaseNotFound(f"no user {body.to!r}")
        exq.resolve_for_case(s, case_id, actor=p.username, resolution=f"reassigned to {body.to}")
        return transition(s, case_id, "reassigned", _actor(p), data={"to": body.to, "reason": body.reason},
                          values={"claimed_by": user.id, "claimed_at": utcnow(), "last_activity_at": utcnow(),
                                  "assignee": user.id})
    return _act(rt, case_id, do)


@router.post("/cases/{case_id}/cancel", response_model=CaseOut, responses=CONFLICT)
def cancel_case(case_id: int, body: ReasonIn, rt: RuntimeDep, p: Supervisor) -> CaseOut:
    """Cancel a case (e.g. the order was cancelled or the study was sent in error)."""
    def do(s: Any) -> Case:
        _supervised_case(s, case_id, p)
        return transition(s, case_id, "cancelled", _actor(p), data={"reason": body.reason})
    return _act(rt, case_id, do)


@router.post("/cases/{case_id}/reroute", response_model=CaseOut, responses=CONFLICT)
def reroute_case(case_id: int, rt: RuntimeDep, p: Supervisor) -> CaseOut:
    """Run the routing rules again now (after a rules, roster or licence change)."""
    def do(s: Any) -> Case:
        case = _supervised_case(s, case_id, p)
        if case.state == "exception":
            transition(s, case_id, "exception_resolved", _actor(p), data={"action": "reroute"})
        route_case(s, case_id, actor=_actor(p), reason="manual reroute", cache_key=rt.db.url)
        return get_case(s, case_id)
    return _act(rt, case_id, do)


def _act(rt: Any, case_id: int, fn: Any) -> CaseOut:
    try:
        with rt.db.session() as s:
            fn(s)
    except (CaseNotFound, NotEligible, IllegalTransition, ValueError) as exc:
        raise _errors(exc) from exc
    with rt.db.read_session() as s:
        out = _case_out(s.execute(case_row(case_id)).one())
    live.publish(rt, "case.changed", {"state": out.state, "claimed_by": out.claimed_by}, case_id=case_id)
    return out


# --- routing rules --------------------------------------------------------------------------------

class RulesOut(BaseModel):
    version: int
    name: str
    document: str
    created_by: str = ""
    created_at: datetime | None = None


@router.get("/routing/rules", response_model=RulesOut)
def get_rules(rt: RuntimeDep, _p: Reader) -> RulesOut:
    """The active routing rules document (version 0: the built-in default)."""
    from readingroom.workflow.rulestore import BUILTIN_RULES

    with rt.db.read_session() as s:
        row = active_version(s)
        if row is None:
            return RulesOut(version=0, name="built-in default", document=BUILTIN_RULES)
        return RulesOut.model_validate(row, from_attributes=True)


@router.put("/routing/rules", response_model=RulesOut, responses={422: {"description": "field-level errors"}})
def put_rules(rt: RuntimeDep, p: RulesAdmin, request: Request,
              document: Annotated[str, Body(media_type="application/yaml")]) -> RulesOut:
    """Replace the routing rules (YAML or JSON). A bad document is rejected with every error; the old one stays."""
    try:
        with rt.db.session() as s:
            row = replace_rules(s, document, actor=p.username)
            audit.record(s, actor=p.username, source=request.client.host if request.client else "",
                         action="rules.replace", resource_type="routing_rules", resource_id=str(row.version))
            out = RulesOut.model_validate(row, from_attributes=True)
    except RulesError as exc:
        raise HTTPException(422, {"message": "invalid routing rules", "errors": exc.errors}) from exc
    return out


@router.get("/routing/rules/versions", response_model=list[RulesOut])
def rules_versions(rt: RuntimeDep, _p: RulesAdmin) -> list[RulesOut]:
    with rt.db.read_session() as s:
        return [RulesOut.model_validate(r, from_attributes=True) for r in list_versions(s)]


@router.get("/cases/{case_id}/dry-run")
def dry_run_case(case_id: int, rt: RuntimeDep, p: Supervisor) -> dict[str, Any]:
    """Who would get this case now, and why (nothing is stored)."""
    with rt.db.read_session() as s:
        try:
            _supervised_case(s, case_id, p)
            decision, _ids, version = decide(s, case_id, trace=True, cache_key=rt.db.url)
        except CaseNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
    return {"rules_version": version, **decision.explanation}


# --- sites and readers ----------------------------------------------------------------------------

class SiteIn(BaseModel):
    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1)
    timezone: str = "UTC"
    jurisdiction: str = ""
    kind: str = Field("spoke", pattern="^(hub|spoke|partner)$")
    residency_tag: str = ""
    institution_names: list[str] = []
    issuer_of_patient_id: str = ""


class SiteOut(SiteIn):
    id: int


@router.get("/sites", response_model=list[SiteOut])
def list_sites(rt: RuntimeDep, _p: PrincipalDep) -> list[SiteOut]:
    with rt.db.read_session() as s:
        return [SiteOut.model_validate(x, from_attributes=True) for x in s.scalars(select(Site).order_by(Site.code))]


@router.post("/sites", response_model=SiteOut, status_code=201,
             responses={409: error_response("A site with this code exists")})
def add_site(body: SiteIn, rt: RuntimeDep, _p: SitesAdmin) -> SiteOut:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(body.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise HTTPException(422, f"unknown time zone {body.timezone!r}") from exc
    with rt.db.session() as s:
        if s.scalars(select(Site).where(Site.code == body.code)).first():
            raise HTTPException(409, f"site {body.code!r} exists")
        site = create_site(s, **body.model_dump())
        out = SiteOut.model_validate(site, from_attributes=True)
    rt.invalidate("sites.")
    return out


class ReaderIn(BaseModel):
    home_site: str | None = None
    timezone: str = "UTC"
    subspecialties: list[str] = []
    qualifications: list[str] = []
    shifts: list[str] = Field(default=[], examples=[["Mon-Fri 08:00-17:00"]])
    capacity_rvu_per_hour: float | None = Field(None, gt=0)
    on_call: bool = False
    residency_tags: list[str] = []
    aliases: list[str] = []
    licences: dict[str, date | None] = {}
    credentials: dict[str, date | None] = {}


@router.get("/readers/{username}")
def read_reader(username: str, rt: RuntimeDep, _p: SitesAdmin) -> dict[str, Any]:
    with rt.db.read_session() as s:
        reader = get_reader(s, username)
    if reader is None:
        raise HTTPException(404, f"{username!r} has no reader profile")
    return reader


@router.put("/readers/{username}")
def put_reader(username: str, body: ReaderIn, rt: RuntimeDep, _p: SitesAdmin) -> dict[str, Any]:
    """Create or replace a reader profile (licences, credentials, shifts, capacity)."""
    try:
        with rt.db.session() as s:
            set_reader(s, username, **body.model_dump())
    except ReaderError as exc:
        raise HTTPException(404 if "no user" in str(exc) else 422, str(exc)) from exc
    with rt.db.read_session() as s:
        return get_reader(s, username) or {}


# --- exception queue ------------------------------------------------------------------------------

class ExceptionOut(BaseModel):
    id: int
    case_id: int | None
    study_uid: str
    kind: str
    reason: str
    state: str
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str
    resolution: str


@router.get("/exceptions", response_model=list[ExceptionOut])
def list_exceptions(rt: RuntimeDep, p: Supervisor, state: str | None = "open",
                    kind: str | None = None) -> list[ExceptionOut]:
    """The exception queue: no eligible reader, unreadable or incomplete studies, stuck cases."""
    with rt.db.read_session() as s:
        items = exq.list_items(s, state=state, kind=kind, scope=policy.exceptions_scope(p))
        return [ExceptionOut.model_validate(i, from_attributes=True) for i in items]


@router.post("/exceptions/{item_id}/resolve", response_model=ExceptionOut)
def resolve_exception(item_id: int, body: ReasonIn, rt: RuntimeDep, p: Supervisor) -> ExceptionOut:
    try:
        with rt.db.session() as s:
            scope = policy.exceptions_scope(p)
            if scope is not None and s.scalar(select(ExceptionItem.id).where(
                    ExceptionItem.id == item_id, scope)) is None:
                raise exq.ExceptionNotFound(f"no exception item {item_id} at a site you supervise")
            item = exq.resolve(s, item_id, actor=p.username, resolution=body.reason)
            return ExceptionOut.model_validate(item, from_attributes=True)
    except (exq.ExceptionNotFound, ValueError) as exc:
        raise _errors(exc) from exc


# --- AI findings ----------------------------------------------------------------------------------

class FindingIn(BaseModel):
    finding_code: str = Field(min_length=1, max_length=48, examples=["ICH"])
    positive: bool = True
    confidence: float | None = Field(None, ge=0, le=1)
    description: str = ""


@router.post("/studies/{study_uid}/ai-findings", response_model=CaseOut, responses=CONFLICT)
def post_finding(study_uid: str, body: FindingIn, rt: RuntimeDep, p: AiEngine) -> CaseOut:
    """An AI engine reports a finding; a positive one flags the case and re-routes it."""
    try:
        with rt.db.session() as s:
            case = record_finding(s, study_uid, finding_code=body.finding_code, confidence=body.confidence,
                                  positive=body.positive, actor=_actor(p),
                                  detail={"description": body.description} if body.description else None,
                                  cache_key=rt.db.url)
            case_id = case.id
    except (NoCaseForStudy, IllegalTransition) as exc:
        raise _errors(exc) from exc
    return _act(rt, case_id, lambda s: None)
