"""Which rows a FHIR read or search returns, scoped to what the caller may see, as resources.

Each resource type has one :class:`Kind`: its search parameters, the SQL
conditions they mean, the policy clause that scopes it (the same clauses
QIDO, the worklist and the REST API use, so FHIR shows nobody more), and
the builder of one resource. A read is a search by ``_id``: a resource the
caller may not see is as absent as one that does not exist (404, nothing
learnt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_, select
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.collab.critical_models import CriticalNotification, CriticalResult
from readingroom.collab.reports import SIGNED_KINDS
from readingroom.collab.reports_models import Report, ReportVersion
from readingroom.governance import policy
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site, User
from readingroom.interop.fhir_resources import (
    DICOM_UID,
    imaging_study_resource,
    issuer_of_system,
    patient_resource,
)
from readingroom.interop.fhir_resources_orders import PLACER_PREFIX, service_request_resource
from readingroom.interop.fhir_resources_work import (
    TASK_STATUS,
    CaseFacts,
    communication_resource,
    diagnostic_report_resource,
    task_resource,
)
from readingroom.interop.fhir_search import SearchRequest, date_clauses, int_id, reference_id, token
from readingroom.interop.models import Order
from readingroom.interop.orders import visible_orders as order_scope
from readingroom.workflow.models import Case

Clause = ColumnElement[bool]


@dataclass(frozen=True)
class Context:
    """What building a resource needs besides the row: the session and the DICOMweb base URL."""

    session: Session
    principal: Principal
    wado_base: str


@dataclass(frozen=True)
class Kind:
    """One resource type: its rows, parameters, scope and builder."""

    name: str
    model: Any
    params: frozenset[str]
    last_updated: Any
    where: Callable[[SearchRequest], list[Clause]]
    scope: Callable[[Principal], Clause | None]
    build: Callable[[Context, Any], dict[str, Any]]
    #: Turns a path id into the row key (None: cannot be one of ours).
    key: Callable[[str], Any] = int_id
    key_column: Any = None
    #: Which patient a row is about (for the audit trail).
    patient_of: Callable[[Session, Any], str] = lambda s, row: ""


def _split(values: list[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v]


def _patient_pks(req: SearchRequest) -> list[int] | None:
    values = _split(req.all("patient"))
    if not values:
        return None
    ids = [reference_id(v, "Patient", "patient") for v in values]
    return [int(i) for i in ids if i.isdigit()]


def _common(req: SearchRequest, kind_column: Any, last_updated: Any, patient_column: Any = None,
            id_key: Callable[[str], Any] = int_id) -> list[Clause]:
    out: list[Clause] = date_clauses(last_updated, req.all("_lastUpdated"))
    if req.all("_id"):
        keys = [k for k in (id_key(v) for v in _split(req.all("_id"))) if k is not None]
        out.append(kind_column.in_(keys) if keys else false())
    pks = _patient_pks(req)
    if pks is not None and patient_column is not None:
        out.append(patient_column.in_(pks) if pks else false())
    return out


def _status(req: SearchRequest, mapping: Callable[[str], Clause]) -> list[Clause]:
    values = _split(req.all("status"))
    return [or_(*(mapping(v) for v in values))] if values else []


def _identifiers(req: SearchRequest, match: Callable[[str | None, str], Clause]) -> list[Clause]:
    values = _split(req.all("identifier"))
    return [or_(*(match(*token(v)) for v in values))] if values else []


def _patient_id_of(session: Session, pk: int | None) -> str:
    return session.scalar(select(Patient.patient_id).where(Patient.id == pk)) or "" if pk is not None else ""


# -- Patient ----------------------------------------------------------------------------------------------------


def _patient_where(req: SearchRequest) -> list[Clause]:
    def ident(system: str | None, value: str) -> Clause:
        cond = Patient.patient_id == value
        return cond if system is None else cond & (Patient.issuer == issuer_of_system(system))
    out = _common(req, Patient.id, Patient.updated_at) + _identifiers(req, ident)
    for name in req.all("name"):
        out.append(func.lower(Patient.name).contains(name.lower()))
    return out


def _patient_scope(principal: Principal) -> Clause | None:
    studies, cases = policy.visible_studies(principal), policy.seeable_cases(principal)
    if studies is None:
        return None
    conds = [Patient.id.in_(select(Study.patient_pk).where(studies))]
    conds.append(Patient.id.in_(select(Case.patient_pk).where(Case.patient_pk.is_not(None),
                                                              *([cases] if cases is not None else []))))
    orders = order_scope(principal)
    conds.append(Patient.id.in_(select(Order.patient_pk).where(Order.patient_pk.is_not(None),
                                                               *([orders] if orders is not None else []))))
    return or_(*conds)


PATIENT = Kind("Patient", Patient, frozenset({"identifier", "name"}), Patient.updated_at, _patient_where,
               _patient_scope, lambda ctx, row: patient_resource(row), key_column=Patient.id,
               patient_of=lambda s, row: row.patient_id)


# -- ImagingStudy ------------------------------------------------------------------------------------------------


def _uid_key(value: str) -> str | None:
    return value if value and len(value) <= 64 and all(c.isdigit() or c == "." for c in value) else None


def _study_where(req: SearchRequest) -> list[Clause]:
    def ident(system: str | None, value: str) -> Clause:
        uid = value[len("urn:oid:"):] if value.startswith("urn:oid:") else value
        if system == DICOM_UID:
            return Study.study_uid == uid
        if system:
            return Study.accession_number == value
        return or_(Study.study_uid == uid, Study.accession_number == value)
    statuses = {"available": Study.state == "complete", "registered": Study.state != "complete"}
    return (_common(req, Study.study_uid, Study.last_received_at, Study.patient_pk, _uid_key)
            + _identifiers(req, ident) + _status(req, lambda v: statuses.get(v, false())))


def _study_order(session: Session, study: Study) -> int | None:
    return session.scalar(select(Order.id).where(or_(
        Order.study_pk == study.id, Order.case_id.in_(select(Case.id).where(Case.study_pk == study.id))))
        .order_by(Order.id).limit(1))


def _build_study(ctx: Context, study: Study) -> dict[str, Any]:
    patient = ctx.session.get(Patient, study.patient_pk)
    return imaging_study_resource(ctx.session, study, patient, ctx.wado_base, _study_order(ctx.session, study))


IMAGING_STUDY = Kind("ImagingStudy", Study, frozenset({"patient", "identifier", "status"}), Study.last_received_at,
                     _study_where, policy.visible_studies, _build_study, key=_uid_key, key_column=Study.study_uid,
                     patient_of=lambda s, row: _patient_id_of(s, row.patient_pk))


# -- ServiceRequest ------------------------------------------------------------------------------------------------


def _order_where(req: SearchRequest) -> list[Clause]:
    def ident(system: str | None, value: str) -> Clause:
        numbers = or_(Order.placer_order_number == value, Order.filler_order_number == value,
                      Order.accession_number == value)
        if system and system.startswith(PLACER_PREFIX):
            return (Order.placer_order_number == value) & (Order.placer_authority == system[len(PLACER_PREFIX):])
        return numbers
    return (_common(req, Order.id, Order.updated_at, Order.patient_pk) + _identifiers(req, ident)
            + _status(req, lambda v: Order.status == v))


def _build_order(ctx: Context, order: Order) -> dict[str, Any]:
    code = ctx.session.scalar(select(Site.code).where(Site.id == order.site_id)) if order.site_id else ""
    return service_request_resource(order, code or "")


SERVICE_REQUEST = Kind("ServiceRequest", Order, frozenset({"patient", "identifier", "status"}), Order.updated_at,
                       _order_where, order_scope, _build_order, key_column=Order.id,
                       patient_of=lambda s, row: row.patient_id)


# -- Task ----------------------------------------------------------------------------------------------------------


def _task_where(req: SearchRequest) -> list[Clause]:
    states: dict[str, list[str]] = {}
    for state, status in TASK_STATUS.items():
        states.setdefault(status, []).append(state)
    out = (_common(req, Case.id, Case.updated_at, Case.patient_pk)
           + _identifiers(req, lambda system, value: Case.accession_number == value)
           + _status(req, lambda v: Case.state.in_(states.get(v, [])) if v in states else false()))
    parents = [int_id(reference_id(v, "Task", "part-of")) for v in _split(req.all("part-of"))]
    if req.all("part-of"):
        keys = [p for p in parents if p is not None]
        out.append(Case.parent_case_id.in_(keys) if keys else false())
    return out


def case_facts(session: Session, case: Case) -> CaseFacts:
    uid = session.scalar(select(Study.study_uid).where(Study.id == case.study_pk)) if case.study_pk else None
    order_id = session.scalar(select(Order.id).where(Order.case_id == case.id).order_by(Order.id).limit(1))
    claimer = session.scalar(select(User.username).where(User.id == case.claimed_by)) if case.claimed_by else None
    return CaseFacts(case, uid, order_id, claimer)


TASK = Kind("Task", Case, frozenset({"patient", "identifier", "status", "part-of"}), Case.updated_at, _task_where,
            policy.seeable_cases, lambda ctx, case: task_resource(case_facts(ctx.session, case)),
            key_column=Case.id, patient_of=lambda s, row: _patient_id_of(s, row.patient_pk))


# -- DiagnosticReport ------------------------------------------------------------------------------------------------

#: The latest signed version of each report: its case, number, kind and when it was signed.
_latest = (select(Report.case_id.label("case_id"), func.max(ReportVersion.number).label("number"))
           .join(ReportVersion, ReportVersion.report_id == Report.id)
           .where(ReportVersion.kind.in_(SIGNED_KINDS)).group_by(Report.case_id).subquery())
_signed = (select(_latest.c.case_id, ReportVersion.kind, ReportVersion.created_at)
           .join(Report, Report.case_id == _latest.c.case_id)
           .join(ReportVersion, (ReportVersion.report_id == Report.id) & (ReportVersion.number == _latest.c.number))
           .subquery())
REPORT_STATUS = {"preliminary": ["preliminary"], "final": ["final"], "appended": ["addendum"]}


def _report_key(value: str) -> int | None:
    return int_id(value[len("report-"):] if value.startswith("report-") else value)


def _report_where(req: SearchRequest) -> list[Clause]:
    def ident(system: str | None, value: str) -> Clause:
        if system == "urn:readingroom:report" or value.startswith("case-"):
            key = int_id(value.removeprefix("case-"))
            return Case.id == key if key is not None else false()
        return Case.accession_number == value
    return (_common(req, Case.id, _signed.c.created_at, Case.patient_pk, _report_key) + _identifiers(req, ident)
            + _status(req, lambda v: _signed.c.kind.in_(REPORT_STATUS.get(v, []))))


def _build_report(ctx: Context, case: Case) -> dict[str, Any]:
    patient = ctx.session.get(Patient, case.patient_pk) if case.patient_pk else None
    order_id = ctx.session.scalar(select(Order.id).where(Order.case_id == case.id).limit(1))
    signed_at = ctx.session.scalar(select(_signed.c.created_at).where(_signed.c.case_id == case.id))
    return diagnostic_report_resource(ctx.session, case, patient_issuer=patient.issuer if patient else "",
                                      patient_id=patient.patient_id if patient else "", order_id=order_id,
                                      last_updated=signed_at)


DIAGNOSTIC_REPORT = Kind("DiagnosticReport", Case, frozenset({"patient", "identifier", "status"}),
                         _signed.c.created_at, _report_where, policy.seeable_cases, _build_report, key=_report_key,
                         key_column=Case.id, patient_of=lambda s, row: _patient_id_of(s, row.patient_pk))


# -- Communication ----------------------------------------------------------------------------------------------------

_COMM_UPDATED = func.coalesce(CriticalResult.acknowledged_at, CriticalResult.created_at)


def _comm_where(req: SearchRequest) -> list[Clause]:
    statuses = {"completed": CriticalResult.state == "acknowledged",
                "in-progress": CriticalResult.state != "acknowledged"}
    return (_common(req, CriticalResult.id, _COMM_UPDATED, Case.patient_pk)
            + _status(req, lambda v: statuses.get(v, false())))


def _build_comm(ctx: Context, result: CriticalResult) -> dict[str, Any]:
    case = ctx.session.get(Case, result.case_id)
    recipients = list(dict.fromkeys(ctx.session.scalars(
        select(CriticalNotification.recipient).where(CriticalNotification.result_id == result.id,
                                                     CriticalNotification.recipient != "")
        .order_by(CriticalNotification.id))))
    return communication_resource(result, case, recipients or ([result.clinician_name] if result.clinician_name
                                                               else []))


COMMUNICATION = Kind("Communication", CriticalResult, frozenset({"patient", "status"}), _COMM_UPDATED, _comm_where,
                     policy.seeable_cases, _build_comm, key_column=CriticalResult.id,
                     patient_of=lambda s, row: _patient_id_of(s, s.get(Case, row.case_id).patient_pk))

KINDS: dict[str, Kind] = {k.name: k for k in (PATIENT, IMAGING_STUDY, SERVICE_REQUEST, DIAGNOSTIC_REPORT, TASK,
                                               COMMUNICATION)}


# -- running a search ---------------------------------------------------------------------------------------------


def _base_query(kind: Kind, principal: Principal, what: Any) -> Any:
    q = select(what).select_from(kind.model)
    if kind is DIAGNOSTIC_REPORT:
        q = q.join(_signed, _signed.c.case_id == Case.id)
    elif kind is COMMUNICATION:
        q = q.join(Case, Case.id == CriticalResult.case_id)
    scope = kind.scope(principal)
    return q.where(scope) if scope is not None else q


def search(ctx: Context, kind: Kind, req: SearchRequest) -> tuple[list[dict[str, Any]], int, list[str]]:
    """One page of matches: the resources, the total, and the patients they are about (for the audit)."""
    where = kind.where(req)
    total = ctx.session.scalar(_base_query(kind, ctx.principal, func.count()).where(*where)) or 0
    rows = ctx.session.scalars(_base_query(kind, ctx.principal, kind.model).where(*where)
                               .order_by(kind.key_column).offset(req.offset).limit(req.count)).all() \
        if req.count else []
    return [kind.build(ctx, r) for r in rows], total, [kind.patient_of(ctx.session, r) for r in rows]


def read(ctx: Context, kind: Kind, ident: str) -> tuple[dict[str, Any], str] | None:
    """The resource with this id if the caller may see it (None otherwise), and its patient."""
    key = kind.key(ident)
    if key is None:
        return None
    row = ctx.session.scalars(_base_query(kind, ctx.principal, kind.model).where(kind.key_column == key)
                              .limit(1)).first()
    if row is None:
        return None
    return kind.build(ctx, row), kind.patient_of(ctx.session, row)
