"""REST edge of patient identity and duplicate reports (``interop.identity``, ``interop.duplicates``).

Identity links and duplicate reports are administration of patient data:
``interop.admin`` (admins everywhere; site admins for patients with a study
or an order at their sites). A patient outside the caller's reach answers
404, like one that does not exist. Reading a patient's links and deciding a
link are audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, false, or_, select

from readingroom.api_errors import error_response
from readingroom.archive.models import Patient, Study
from readingroom.governance import audit, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.interop import duplicates, identity
from readingroom.interop.models import Order, PatientLink

router = APIRouter(tags=["identity"])
IdentityAdmin = Annotated[Principal, Depends(require(policy.INTEROP_ADMIN))]
ERRORS: dict[int | str, dict[str, Any]] = {404: error_response("No such patient or link (or not visible)"),
                                            409: error_response("The link was already decided")}


class PatientRef(BaseModel):
    id: int
    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str


class LinkOut(BaseModel):
    """Two records the matching rules say are (``match``) or may be (``possible``) one person."""

    id: int
    rule: str
    state: str
    detail: dict[str, Any]
    patient: PatientRef
    other: PatientRef
    created_at: str
    decided_by: str
    decided_at: str | None


class DecisionIn(BaseModel):
    note: str = Field("", max_length=2000, description="Why (kept in the audit trail)")


class DuplicateOut(BaseModel):
    id: int
    kind: str
    study_uid: str
    reason: str
    state: str
    created_at: str


def patient_scope(principal: Principal) -> ColumnElement[bool] | None:
    """Condition on ``Patient``: records with a study or an order at a site the caller administers."""
    sites = policy.sites_where(principal, policy.INTEROP_ADMIN)
    if sites is None:
        return None
    if not sites:
        return false()
    ids = sorted(sites)
    return or_(Patient.id.in_(select(Study.patient_pk).where(Study.site_id.in_(ids))),
               Patient.id.in_(select(Order.patient_pk).where(Order.site_id.in_(ids))))


def _visible_patient(s: Any, principal: Principal, patient_pk: int) -> Patient:
    q = select(Patient).where(Patient.id == patient_pk)
    scope = patient_scope(principal)
    if scope is not None:
        q = q.where(scope)
    patient = s.scalars(q).first()
    if patient is None:
        raise HTTPException(404, f"no patient {patient_pk}")
    return patient


@router.get("/patients/{patient_pk}/links", response_model=list[LinkOut], responses=ERRORS)
def patient_links(rt: RuntimeDep, p: IdentityAdmin, patient_pk: int,
                  state: Annotated[str | None, Query(description="match, possible, confirmed or rejected")] = None
                  ) -> list[dict[str, Any]]:
    """The identity links of one patient record (its id in ReadingRoom, not the Patient ID)."""
    with rt.db.session() as s:
        patient = _visible_patient(s, p, patient_pk)
        links = identity.list_links(s, state=state, patient_pk=patient_pk)
        audit.record(s, actor=p.username, action="patient_link.read", resource_type="patient",
                     resource_id=str(patient_pk), patient_id=patient.patient_id, detail={"links": len(links)})
        return links


@router.get("/interop/identity/links", response_model=list[LinkOut])
def all_links(rt: RuntimeDep, p: IdentityAdmin,
              state: Annotated[str | None, Query(description="match, possible, confirmed or rejected")] = "possible",
              limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
    """Links to decide (``state=possible`` by default; empty ``state`` for all), newest first."""
    with rt.db.read_session() as s:
        return identity.list_links(s, state=state or None, scope=patient_scope(p), limit=limit)


def _decide(rt: Any, p: Principal, link_id: int, decision: str, body: DecisionIn | None) -> dict[str, Any]:
    with rt.db.session() as s:
        link = s.get(PatientLink, link_id)
        scope = patient_scope(p)
        if link is None or (scope is not None and s.scalar(select(Patient.id).where(
                Patient.id.in_([link.patient_pk, link.other_pk]), scope).limit(1)) is None):
            raise HTTPException(404, f"no patient link {link_id}")
        try:
            return identity.decide(s, link_id, decision, actor=p.username, note=body.note if body else "")
        except identity.LinkDecided as exc:
            raise HTTPException(409, str(exc)) from exc


@router.post("/interop/identity/links/{link_id}/confirm", response_model=LinkOut, responses=ERRORS)
def confirm_link(rt: RuntimeDep, p: IdentityAdmin, link_id: int,
                 body: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
    """A person confirms the two records are one patient (recorded; the records are not merged)."""
    return _decide(rt, p, link_id, "confirm", body)


@router.post("/interop/identity/links/{link_id}/reject", response_model=LinkOut, responses=ERRORS)
def reject_link(rt: RuntimeDep, p: IdentityAdmin, link_id: int,
                body: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
    """A person says the two records are different patients; the rule will not report the pair again."""
    return _decide(rt, p, link_id, "reject", body)


@router.get("/interop/duplicates", response_model=list[DuplicateOut])
def list_duplicates(rt: RuntimeDep, p: IdentityAdmin,
                    state: Annotated[str | None, Query(description="open or resolved; empty for all")] = "open",
                    kind: Annotated[str | None, Query(pattern="^(duplicate_study|duplicate_accession)$")] = None,
                    ) -> list[dict[str, Any]]:
    """Duplicate-study reports (same Study UID from two sites, same accession twice); resolve them in
    the exception queue (``POST /api/v1/exceptions/{id}/resolve``)."""
    with rt.db.read_session() as s:
        items = duplicates.list_duplicates(s, state=state or None, kind=kind, scope=policy.exceptions_scope(p))
        return [{"id": i.id, "kind": i.kind, "study_uid": i.study_uid, "reason": i.reason, "state": i.state,
                 "created_at": i.created_at.isoformat()} for i in items]
