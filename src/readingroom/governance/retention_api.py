"""HTTP edge of retention: rules, legal holds and runs under ``/api/v1/retention``.

Every route needs ``retention.admin``; what a caller may touch is then the
sites :func:`policy.sites_where` gives them for that action (every site for
network administrators). The service functions do the scoping, validation
and auditing; this module only maps their errors to status codes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, model_validator

from readingroom.api_errors import error_response
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.models import RetentionRule
from readingroom.governance.retention import Scope
from readingroom.governance.retention_admin import (
    MAX_AGE_DAYS,
    Conflict,
    Forbidden,
    HoldView,
    Invalid,
    NotFound,
    RetentionError,
    create_hold,
    create_rule,
    delete_rule,
    list_holds,
    list_rules,
    release_hold,
)
from readingroom.governance.retention_run import RetentionBusy, RetentionReport, run_retention

router = APIRouter(prefix="/retention", tags=["retention"])
Admin = Annotated[Principal, Depends(require(policy.RETENTION_ADMIN))]

_STATUS = {Invalid: 422, NotFound: 404, Conflict: 409, Forbidden: 403}


def _scope(principal: Principal) -> Scope:
    return policy.sites_where(principal, policy.RETENTION_ADMIN)


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _error(exc: RetentionError) -> HTTPException:
    return HTTPException(status_code=_STATUS.get(type(exc), 400), detail=str(exc))


class RuleIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    site_id: int | None = Field(default=None, description="Site the rule applies to; omit for every site")
    modality: str = Field(default="", max_length=16, description="DICOM modality code; empty for any")
    min_age_days: int = Field(ge=1, le=MAX_AGE_DAYS, description="Studies older than this many days are due")
    enabled: bool = True


class RuleOut(BaseModel):
    id: int
    name: str
    site_id: int | None
    modality: str
    min_age_days: int
    enabled: bool
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, rule: RetentionRule) -> RuleOut:
        return cls.model_validate(rule, from_attributes=True)


class HoldIn(BaseModel):
    study_uid: str | None = Field(default=None, max_length=64)
    patient_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(min_length=1, max_length=2000, description="Matter, case number, who asked for it")

    @model_validator(mode="after")
    def one_target(self) -> HoldIn:
        if bool(self.study_uid) == bool(self.patient_id):
            raise ValueError("give exactly one of study_uid or patient_id")
        return self


class HoldOut(BaseModel):
    id: int
    study_uid: str
    patient_id: str
    reason: str
    created_by: str
    created_at: datetime
    released_at: datetime | None
    released_by: str
    active: bool
    studies: int = Field(description="Studies in the archive the hold covers now")

    @classmethod
    def of(cls, view: HoldView) -> HoldOut:
        h = view.hold
        return cls(id=h.id, study_uid=h.study_uid, patient_id=h.patient_id, reason=h.reason,
                   created_by=h.created_by, created_at=h.created_at, released_at=h.released_at,
                   released_by=h.released_by, active=h.released_at is None, studies=view.studies)


class ReleaseIn(BaseModel):
    reason: str = Field(default="", max_length=2000)


class RunIn(BaseModel):
    dry_run: bool = Field(default=True, description="Only report; set false to purge")
    max_studies: int = Field(default=1000, ge=0, le=100_000, description="Most studies listed in the answer")


class ReasonOut(BaseModel):
    code: str
    text: str


class StudyOut(BaseModel):
    study_uid: str
    patient_id: str
    site_id: int | None
    modalities: str
    study_date: str
    age_days: int | None
    rule: str
    instances: int
    bytes: int
    action: str = Field(description="would_purge | purged | keep | skipped | failed")
    reasons: list[ReasonOut]


class ReportOut(BaseModel):
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    rules: list[str]
    totals: dict[str, int]
    studies: list[StudyOut]
    truncated: bool

    @classmethod
    def of(cls, report: RetentionReport, limit: int) -> ReportOut:
        studies = [StudyOut.model_validate(d, from_attributes=True) for d in report.studies[:limit]]
        return cls(dry_run=report.dry_run, started_at=report.started_at, finished_at=report.finished_at,
                   rules=[r.name for r in report.rules], totals=report.totals, studies=studies,
                   truncated=len(report.studies) > limit)


@router.get("/rules", response_model=list[RuleOut])
def get_rules(rt: RuntimeDep, p: Admin) -> list[RuleOut]:
    """Retention rules of the caller's sites and the network-wide ones."""
    with rt.db.read_session() as s:
        return [RuleOut.of(r) for r in list_rules(s, _scope(p))]


@router.post("/rules", response_model=RuleOut, status_code=201, responses={
    404: error_response("No such site among those the caller administers"),
    409: error_response("A rule with this name exists")})
def post_rule(body: RuleIn, rt: RuntimeDep, p: Admin, request: Request) -> RuleOut:
    """Add a rule: studies of the site (every site) and modality (any) older than min_age_days become due."""
    with rt.db.session() as s:
        try:
            rule = create_rule(s, name=body.name, site_id=body.site_id, modality=body.modality,
                               min_age_days=body.min_age_days, enabled=body.enabled, actor=p.username,
                               scope=_scope(p), source=_source(request))
        except RetentionError as exc:
            raise _error(exc) from exc
        return RuleOut.of(rule)


@router.delete("/rules/{rule_id}", status_code=204)
def remove_rule(rule_id: int, rt: RuntimeDep, p: Admin, request: Request) -> Response:
    """Delete a rule."""
    with rt.db.session() as s:
        try:
            delete_rule(s, rule_id, actor=p.username, scope=_scope(p), source=_source(request))
        except RetentionError as exc:
            raise _error(exc) from exc
    return Response(status_code=204)


@router.get("/holds", response_model=list[HoldOut])
def get_holds(rt: RuntimeDep, p: Admin,
              include_released: Annotated[bool, Query(description="Also list released holds")] = False,
              ) -> list[HoldOut]:
    """Legal holds covering the caller's sites (active ones unless asked)."""
    with rt.db.read_session() as s:
        return [HoldOut.of(v) for v in list_holds(s, _scope(p), actor=p.username,
                                                  include_released=include_released)]


@router.post("/holds", response_model=HoldOut, status_code=201, responses={
    404: error_response("No such study or patient at the sites the caller administers"),
    409: error_response("The hold exists already")})
def post_hold(body: HoldIn, rt: RuntimeDep, p: Admin, request: Request) -> HoldOut:
    """Place a legal hold on a study or on every study of a patient."""
    with rt.db.session() as s:
        try:
            view = create_hold(s, study_uid=body.study_uid or "", patient_id=body.patient_id or "",
                               reason=body.reason, actor=p.username, scope=_scope(p), source=_source(request))
        except RetentionError as exc:
            raise _error(exc) from exc
        return HoldOut.of(view)


@router.post("/holds/{hold_id}/release", response_model=HoldOut,
             responses={409: error_response("The hold was already released")})
def post_release(hold_id: int, rt: RuntimeDep, p: Admin, request: Request,
                 body: ReleaseIn | None = None) -> HoldOut:
    """Release a legal hold; the studies it kept become purgeable again if due."""
    with rt.db.session() as s:
        try:
            view = release_hold(s, hold_id, actor=p.username, scope=_scope(p),
                                reason=body.reason if body else "", source=_source(request))
        except RetentionError as exc:
            raise _error(exc) from exc
        return HoldOut.of(view)


@router.post("/run", response_model=ReportOut, responses={409: error_response("A retention run is under way")})
async def post_run(body: RunIn, rt: RuntimeDep, p: Admin, request: Request) -> ReportOut:
    """Run retention now over the caller's sites: a dry run reports, a real run purges what is not kept."""
    try:
        report = await run_in_threadpool(run_retention, rt, dry_run=body.dry_run, actor=p.username,
                                         source=_source(request), scope=_scope(p))
    except RetentionBusy as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return ReportOut.of(report, body.max_studies)
