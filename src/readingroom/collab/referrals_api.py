"""REST edge of referrals: partners submit and follow them; receiving sites accept or decline."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.collab import live
from readingroom.collab import referral_status as rs
from readingroom.collab import referrals as svc
from readingroom.collab.referrals import ImagesPlan, NewReferral
from readingroom.collab.referrals_models import Referral
from readingroom.collab.refusals import Refused
from readingroom.governance import audit, policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site, SiteMembership, User
from readingroom.runtime import Runtime
from readingroom.workflow.enums import Priority

router = APIRouter(tags=["referrals"])
Partner = Annotated[Principal, Depends(require(policy.REFERRALS_SUBMIT))]
Manager = Annotated[Principal, Depends(require(policy.REFERRALS_MANAGE))]
CONFLICT: dict[int | str, dict[str, Any]] = {409: error_response("The referral was already answered")}
T = TypeVar("T")


async def _submitter_or_manager(p: PrincipalDep) -> Principal:
    if not (policy.allowed(p, policy.REFERRALS_SUBMIT) or policy.allowed(p, policy.REFERRALS_MANAGE)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "not allowed: referrals.submit or referrals.manage")
    return p


Involved = Annotated[Principal, Depends(_submitter_or_manager)]


class ReferralIn(BaseModel):
    receiving_site: str = Field(min_length=1, max_length=32, description="Code of the site asked to read")
    patient_id: str = Field(min_length=1, max_length=64)
    issuer_of_patient_id: str = Field(default="", max_length=64)
    patient_name: str = Field(min_length=1, max_length=128, description="DICOM PN, e.g. Doe^Jane")
    birth_date: date
    sex: str = Field(pattern="^[MFOU]$", description="M, F, O or U")
    clinical_question: str = Field(min_length=1, max_length=8000)
    priority: Priority = Priority.ROUTINE
    requested_procedure: str = Field(min_length=1, max_length=128)
    modality: str = Field(min_length=1, max_length=16, pattern="^[A-Za-z]{2,16}$")
    body_part: str = Field(default="", max_length=64)
    images: ImagesPlan = Field(description="to_follow (send them with the accession number) or scan_requested")
    referring_physician: str = Field(default="", max_length=128, description="DICOM PN of the referring doctor")


class DeclineIn(BaseModel):
    reason: str = Field(min_length=5, max_length=4000)


class ReferralOut(BaseModel):
    id: int
    accession_number: str = Field(description="Put this Accession Number (0008,0050) on the images you send")
    status: str = Field(description="Latest step: received, accepted, declined, images_available, in_reading, "
                                    "preliminary, reported, addended, cancelled")
    state: str
    receiving_site: str
    submitted_by: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    birth_date: date
    sex: str
    clinical_question: str
    priority: str
    requested_procedure: str
    modality: str
    body_part: str
    images: str
    referring_physician: str
    sla_due_at: datetime
    sla_breached_at: datetime | None
    decided_at: datetime | None
    decided_by: str
    decline_reason: str
    case_id: int | None
    created_at: datetime


class StepOut(BaseModel):
    status: str
    at: datetime
    detail: dict[str, Any] = {}


class ReportOut(BaseModel):
    link: str
    kind: str
    version: int | None
    signed_at: datetime
    signed_by: str
    text: str


class ReferralDetail(ReferralOut):
    timeline: list[StepOut]
    report: ReportOut | None


def _run(rt: Runtime, work: Callable[[Session], T]) -> T:
    try:
        with rt.db.session() as s:
            return work(s)
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc


def _out(s: Session, r: Referral, steps: list[rs.Step] | None = None) -> ReferralOut:
    steps = rs.timeline(s, r) if steps is None else steps
    site = s.get(Site, r.receiving_site_id)
    by = s.get(User, r.submitted_by)
    return ReferralOut(
        id=r.id, accession_number=r.accession_number, status=rs.current_status(steps), state=r.state,
        receiving_site=site.code if site else "", submitted_by=by.username if by else "", patient_id=r.patient_id,
        issuer_of_patient_id=r.issuer_of_patient_id, patient_name=r.patient_name, birth_date=r.birth_date, sex=r.sex,
        clinical_question=r.clinical_question, priority=r.priority, requested_procedure=r.requested_procedure,
        modality=r.modality, body_part=r.body_part, images=r.images, referring_physician=r.referring_physician,
        sla_due_at=r.sla_due_at, sla_breached_at=r.sla_breached_at, decided_at=r.decided_at, decided_by=r.decided_by,
        decline_reason=r.decline_reason, case_id=r.case_id, created_at=r.created_at)


def _managers(s: Session, site_id: int) -> set[int]:
    """Users who may answer referrals at a site (for the live 'referral received' event)."""
    roles = [r for r in ("admin", "site_admin") if policy.REFERRALS_MANAGE in policy.actions_for_role(r)]
    rows = s.scalars(select(User.id).where(User.active, or_(
        User.role == "admin", (User.site_id == site_id) & User.role.in_(roles),
        User.id.in_(select(SiteMembership.user_id).where(SiteMembership.site_id == site_id,
                                                         SiteMembership.role.in_(roles))))))
    return set(rows)


@router.post("/referrals", response_model=ReferralOut, status_code=201)
def submit_referral(body: ReferralIn, rt: RuntimeDep, p: Partner) -> ReferralOut:
    """Refer a patient to a receiving site; the answer is due within the SLA of the priority."""

    def work(s: Session) -> tuple[ReferralOut, set[int]]:
        site = s.scalars(select(Site).where(Site.code == body.receiving_site)).first()
        if site is None:
            raise Refused("invalid", f"no receiving site {body.receiving_site!r}")
        new = NewReferral(receiving_site_id=site.id, patient_id=body.patient_id, patient_name=body.patient_name,
                          birth_date=body.birth_date, sex=body.sex, clinical_question=body.clinical_question,
                          priority=body.priority, requested_procedure=body.requested_procedure,
                          modality=body.modality, images=body.images,
                          issuer_of_patient_id=body.issuer_of_patient_id, body_part=body.body_part,
                          referring_physician=body.referring_physician)
        referral = svc.submit(s, p, new, rt.settings.referral_sla_hours)
        return _out(s, referral), _managers(s, site.id)

    out, managers = _run(rt, work)
    live.publish(rt, "referral.received", {"referral_id": out.id, "priority": out.priority},
                 user_ids=managers | {p.user_id})
    return out


@router.get("/referrals", response_model=list[ReferralOut])
def list_referrals(rt: RuntimeDep, p: Involved, request: Request, state: str | None = None) -> list[ReferralOut]:
    """Your referrals (partners) and those addressed to the sites whose referrals you manage, newest first."""
    with rt.db.read_session() as s:
        out = [_out(s, r) for r in svc.visible_list(s, p, state=state)]
    if out:
        audit.record_soon(rt.db, actor=p.username, action="referral.list", resource_type="referral",
                          resource_id=",".join(str(r.id) for r in out[:50]),
                          source=request.client.host if request.client else "")
    return out


@router.get("/referrals/{referral_id}", response_model=ReferralDetail)
def referral_detail(referral_id: int, rt: RuntimeDep, p: Involved, request: Request) -> ReferralDetail:
    """A referral with every status it went through and, once signed, the report (text and link)."""
    try:
        with rt.db.read_session() as s:
            r = svc.get(s, p, referral_id)
            steps = rs.timeline(s, r)
            report = rs.signed_report(s, r.case_id) if r.case_id is not None else None
            base = _out(s, r, steps)
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    audit.record_soon(rt.db, actor=p.username, action="referral.read", resource_type="referral",
                      resource_id=str(referral_id), patient_id=base.patient_id,
                      source=request.client.host if request.client else "",
                      detail={"report_version": report.version if report else None})
    return ReferralDetail(**base.model_dump(), timeline=[StepOut(status=x.status, at=x.at, detail=x.detail)
                                                         for x in steps],
                          report=ReportOut(**vars(report)) if report else None)


@router.post("/referrals/{referral_id}/accept", response_model=ReferralOut, responses=CONFLICT)
def accept_referral(referral_id: int, rt: RuntimeDep, p: Manager) -> ReferralOut:
    """Accept: a case waits for the images with the referral's accession number; the partner may follow it."""
    out = _run(rt, lambda s: _out(s, svc.accept(s, p, referral_id, rt.settings.referral_access_days)))
    policy.forget_decisions()
    live.publish(rt, "referral.accepted", {"referral_id": out.id}, case_id=out.case_id,
                 user_ids=_partner_of(rt, out.id))
    return out


@router.post("/referrals/{referral_id}/decline", response_model=ReferralOut, responses=CONFLICT)
def decline_referral(referral_id: int, body: DeclineIn, rt: RuntimeDep, p: Manager) -> ReferralOut:
    """Decline, with the reason the partner reads."""
    out = _run(rt, lambda s: _out(s, svc.decline(s, p, referral_id, body.reason)))
    live.publish(rt, "referral.declined", {"referral_id": out.id}, user_ids=_partner_of(rt, out.id))
    return out


def _partner_of(rt: Runtime, referral_id: int) -> set[int]:
    with rt.db.read_session() as s:
        user_id = s.scalar(select(Referral.submitted_by).where(Referral.id == referral_id))
    return {user_id} if user_id is not None else set()
