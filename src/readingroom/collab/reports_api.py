"""REST edge of reports: templates, the report of a case, signatures, addenda, history, diff, outputs.

Every route asks the policy twice: the route gate (``reports.write`` to
draft, ``reports.sign`` to sign) and the relationship to the case
(``can_see_case``); writing and signing further need the case's reader.
Writes carry ``If-Match`` (428 without it); a stale one answers 412 with the
newer version in the body and its ETag in the header, so no one overwrites
anyone. Reads of report content are audited.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from readingroom.api_errors import error_response
from readingroom.archive.models import Patient
from readingroom.collab import live, report_reads, reports
from readingroom.collab import report_templates as templates
from readingroom.collab.report_fhir import to_fhir
from readingroom.collab.report_hl7 import render_oru
from readingroom.collab.report_render import to_html, to_pdf
from readingroom.collab.reports_models import Report
from readingroom.governance import audit, policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.workflow.cases import Actor
from readingroom.workflow.models import Case
from readingroom.workflow.states import IllegalTransition

router = APIRouter(tags=["reports"])
Writer = Annotated[Principal, Depends(require(policy.REPORTS_WRITE))]
Signer = Annotated[Principal, Depends(require(policy.REPORTS_SIGN))]
VersionQ = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="a version number (default: the latest)")]
IfMatch = Annotated[str | None, Header(description="the ETag of the version the change is based on")]

CONFLICT = error_response("Not possible in the report's or case's state (a final cannot change, nothing signed yet)")
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    409: CONFLICT,
    412: error_response("The report changed since the If-Match version: detail.current is the newer one "
                        "(with its ETag) to merge with"),
    428: error_response("If-Match is required (the ETag of the version the change is based on)"),
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {409: error_response("The case has no (signed) report yet")}


# -- shapes ---------------------------------------------------------------------------------------------------


class AddendumOut(BaseModel):
    number: int
    text: str
    signer: str
    signed_at: Any


class ReportOut(BaseModel):
    """A case's report at one version; ``status`` ``none`` (version 0) until the first draft is saved."""

    case_id: int
    status: Literal["none", "draft", "preliminary", "final", "addended"]
    version: int
    etag: str
    view: Literal["working", "signed", "version"] = Field(
        description="working: the latest version (report writers); signed: the latest signed version; "
                    "version: the one asked for")
    template_id: str
    template_title: str
    sections: dict[str, str]
    addenda: list[AddendumOut] = []
    author: str = ""
    signer: str = ""
    updated_at: Any = None


class ReportIn(BaseModel):
    """The whole sections document (autosave sends all of it every time)."""

    template_id: str | None = Field(None, max_length=64, description="default: the report's or the case's best")
    sections: dict[str, str] = Field(description="section id -> text; macros such as .normal are expanded")


class SignIn(BaseModel):
    status: Literal["preliminary", "final"]


class AddendumIn(BaseModel):
    text: str = Field(min_length=1, max_length=reports.MAX_ADDENDUM_CHARS)


class VersionOut(BaseModel):
    number: int
    kind: Literal["draft", "preliminary", "final", "addendum"]
    author: str
    created_at: Any
    signed_by: str
    signer_name: str
    etag: str


class SectionDiffOut(BaseModel):
    id: str
    title: str
    changed: bool
    lines: list[str] = Field(description="unified diff lines (difflib), empty when unchanged")


class DiffOut(BaseModel):
    from_version: int
    to_version: int
    sections: list[SectionDiffOut]


# -- helpers --------------------------------------------------------------------------------------------------


def _status_of(kind: str) -> str:
    return {"addendum": "addended"}.get(kind, kind)


def _out_of(doc: report_reads.ReportDocument, view: str) -> ReportOut:
    return ReportOut(case_id=doc.case_id, status=_status_of(doc.kind), version=doc.number,  # type: ignore[arg-type]
                     etag=reports.etag(doc.case_id, doc.number), view=view,  # type: ignore[arg-type]
                     template_id=doc.template_id, template_title=doc.template_title,
                     sections={s.id: s.text for s in doc.sections},
                     addenda=[AddendumOut(**vars(a)) for a in doc.addenda], author=doc.author, signer=doc.signer,
                     updated_at=doc.created_at)


def _empty(case: Case) -> ReportOut:
    template = templates.best_template(case.modality, case.body_part)
    return ReportOut(case_id=case.id, status="none", version=0, etag=reports.etag(case.id, 0), view="working",
                     template_id=template.id, template_title=template.title,
                     sections=templates.initial_sections(template))


def _current(s: Any, case: Case) -> ReportOut:
    """The working copy as committed now (the body of a 412)."""
    report = s.execute(select(Report.id).where(Report.case_id == case.id)).first()
    if report is None:
        return _empty(case)
    return _out_of(report_reads.document(s, case.id, None, signed_only=False), "working")


def _case(s: Any, case_id: int, p: Principal) -> Case:
    case = s.get(Case, case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    if not policy.can_see_case(s, p, case):
        raise HTTPException(403, "no relationship to this case (not routed to you, not your site, no grant)")
    return case


def _expected(case_id: int, if_match: str | None, current: Any) -> int:
    if not if_match:
        raise HTTPException(428, "If-Match is required: send the ETag of the report version you edited")
    if if_match.strip() == "*":
        raise HTTPException(428, "If-Match must name a version (ETag), not '*': a blind overwrite could lose text")
    expected = reports.parse_if_match(if_match, case_id)
    if expected is None:
        raise _stale(reports.StaleReport(case_id, None), current())
    return expected


def _stale(exc: reports.StaleReport, current: ReportOut) -> HTTPException:
    return HTTPException(412, {"message": str(exc), "current": current.model_dump(mode="json")},
                         headers={"ETag": current.etag})


def _write(rt: Any, case_id: int, p: Principal, if_match: str | None, fn: Any, event: str, *,
           reader_only: bool = True) -> JSONResponse:
    """Run one report write in a transaction and answer the new version (or the right error).

    Who may write is decided before the If-Match check, so a caller without
    the right learns nothing about the report's versions.
    """
    actor = Actor(name=p.username, user_id=p.user_id)
    try:
        with rt.db.session() as s:
            case = _case(s, case_id, p)
            if reader_only:
                reports.require_reader(case, actor)
            expected = _expected(case_id, if_match, lambda: _current(s, case))
            report = fn(s, case, actor, expected)
            out = _out_of(report_reads.document(s, case_id, report.version, signed_only=False), "working")
    except reports.StaleReport as exc:
        with rt.db.read_session() as s:
            raise _stale(exc, _current(s, s.get(Case, case_id))) from exc
    except reports.NotReportReader as exc:
        raise HTTPException(403, str(exc)) from exc
    except (reports.ReportLocked, IllegalTransition) as exc:
        raise HTTPException(409, str(exc)) from exc
    except templates.TemplateError as exc:
        raise HTTPException(422, str(exc)) from exc
    live.publish(rt, event, {"case_id": case_id, "version": out.version, "status": out.status}, case_id=case_id)
    return JSONResponse(out.model_dump(mode="json"), headers={"ETag": out.etag})


def _read_doc(rt: Any, case_id: int, p: Principal, request: Request, number: int | None,
              what: str) -> report_reads.ReportDocument:
    """A signed version for an output, after the relationship check; the read is audited."""
    with rt.db.read_session() as s:
        case = _case(s, case_id, p)
        try:
            doc = report_reads.document(s, case_id, number, signed_only=True)
        except reports.ReportNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except reports.ReportLocked as exc:
            raise HTTPException(409, str(exc)) from exc
        pid = s.scalar(select(Patient.patient_id).where(Patient.id == case.patient_pk)) if case.patient_pk else ""
    _audit_read(rt, p, request, case_id, pid or "", doc.number, what)
    return doc


def _audit_read(rt: Any, p: Principal, request: Request, case_id: int, patient_id: str, number: int,
                what: str) -> None:
    audit.record_soon(rt.db, actor=p.username, action="report.read", resource_type="case",
                      resource_id=str(case_id), patient_id=patient_id,
                      source=request.client.host if request.client else "",
                      detail={"version": number, "format": what})


# -- templates ------------------------------------------------------------------------------------------------


@router.get("/report-templates", response_model=list[templates.ReportTemplate])
def list_templates(_p: PrincipalDep, modality: Annotated[str | None, Query(max_length=16)] = None,
                   body_part: Annotated[str | None, Query(max_length=64)] = None) -> list[templates.ReportTemplate]:
    """Report templates, best fit first; with both filters, those that fit (a generic one always does)."""
    return templates.find_templates(modality, body_part)


@router.get("/cases/{case_id}/report-template", response_model=templates.ReportTemplate)
def case_template(case_id: int, rt: RuntimeDep, p: PrincipalDep) -> templates.ReportTemplate:
    """The best template for the case's modality and body part."""
    with rt.db.read_session() as s:
        case = _case(s, case_id, p)
        return templates.best_template(case.modality, case.body_part)


# -- the report -----------------------------------------------------------------------------------------------


@router.get("/cases/{case_id}/report", response_model=ReportOut, responses={
    200: {"headers": {"ETag": {"description": "the version's entity tag, for If-Match",
                               "schema": {"type": "string"}}}}, 404: error_response("No such case or version")})
def get_report(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request,
               version: VersionQ = None) -> JSONResponse:
    """The case's report: report writers get the working copy (drafts included), others the latest signed version.

    Before anything is signed, a non-writer gets ``status: none``; before the
    first draft everyone does, with the best template's empty sections and
    the ETag of version 0 (send it as If-Match to create the first draft).
    """
    writer = policy.allowed(p, policy.REPORTS_WRITE)
    with rt.db.read_session() as s:
        case = _case(s, case_id, p)
        try:
            doc = report_reads.document(s, case_id, version, signed_only=not writer)
        except reports.ReportNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except reports.ReportLocked:
            doc = None
        pid = s.scalar(select(Patient.patient_id).where(Patient.id == case.patient_pk)) if case.patient_pk else ""
        out = _empty(case) if doc is None else _out_of(
            doc, "version" if version else ("working" if writer else "signed"))
    if doc is not None:
        _audit_read(rt, p, request, case_id, pid or "", doc.number, "json")
    return JSONResponse(out.model_dump(mode="json"), headers={"ETag": out.etag})


@router.put("/cases/{case_id}/report", response_model=ReportOut, responses=WRITE_ERRORS)
def put_report(case_id: int, body: ReportIn, rt: RuntimeDep, p: Writer, if_match: IfMatch = None) -> JSONResponse:
    """Save the whole sections document as the next draft (autosave); the case's reader only."""
    return _write(rt, case_id, p, if_match, lambda s, case, actor, expected: reports.save_draft(
        s, case, actor, expected, body.sections, body.template_id), "report.drafted")


@router.post("/cases/{case_id}/report/sign", response_model=ReportOut, responses=WRITE_ERRORS)
def sign_report(case_id: int, body: SignIn, rt: RuntimeDep, p: Signer, if_match: IfMatch = None) -> JSONResponse:
    """Sign the current text as preliminary or final; the final completes the case and cannot change."""
    return _write(rt, case_id, p, if_match, lambda s, case, actor, expected: reports.sign(
        s, case, actor, expected, body.status)[0], f"report.{body.status}")


@router.post("/cases/{case_id}/report/addenda", response_model=ReportOut, status_code=201, responses=WRITE_ERRORS)
def add_addendum(case_id: int, body: AddendumIn, rt: RuntimeDep, p: Signer,
                 if_match: IfMatch = None) -> JSONResponse:
    """Add a signed addendum to a final report (any reader who may sign and can see the case)."""
    response = _write(rt, case_id, p, if_match, lambda s, case, actor, expected: reports.add_addendum(
        s, case, actor, expected, body.text)[0], "report.addended", reader_only=False)
    response.status_code = 201
    return response


@router.get("/cases/{case_id}/report/versions", response_model=list[VersionOut])
def list_versions(case_id: int, rt: RuntimeDep, p: PrincipalDep) -> list[VersionOut]:
    """Every version, oldest first (signed versions only for people who do not write reports)."""
    with rt.db.read_session() as s:
        _case(s, case_id, p)
        rows = report_reads.versions(s, case_id, signed_only=not policy.allowed(p, policy.REPORTS_WRITE))
        return [VersionOut(number=r.number, kind=r.kind, author=r.author, created_at=r.created_at,  # type: ignore
                           signed_by=r.signed_by, signer_name=r.signer_name, etag=reports.etag(case_id, r.number))
                for r in rows]


@router.get("/cases/{case_id}/report/diff", response_model=DiffOut, responses=READ_ERRORS)
def diff_versions(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request,
                  from_version: Annotated[int | None, Query(alias="from", ge=1, le=2**31 - 1)] = None,
                  to_version: Annotated[int | None, Query(alias="to", ge=1, le=2**31 - 1)] = None) -> DiffOut:
    """What changed between two versions, per section (default: the latest and the one before it)."""
    with rt.db.read_session() as s:
        case = _case(s, case_id, p)
        try:
            old, new, sections = report_reads.diff(s, case_id, from_version, to_version,
                                                   signed_only=not policy.allowed(p, policy.REPORTS_WRITE))
        except reports.ReportNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except reports.ReportLocked as exc:
            raise HTTPException(409, str(exc)) from exc
        pid = s.scalar(select(Patient.patient_id).where(Patient.id == case.patient_pk)) if case.patient_pk else ""
    _audit_read(rt, p, request, case_id, pid or "", new, f"diff from {old}")
    return DiffOut(from_version=old, to_version=new, sections=[SectionDiffOut(**vars(d)) for d in sections])


# -- outputs (signed versions only) ---------------------------------------------------------------------------


def _content(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {media_type: {}}, "description": description}, **READ_ERRORS}


@router.get("/cases/{case_id}/report/fhir", response_class=Response,
            responses=_content("application/fhir+json", "FHIR R4 DiagnosticReport"))
def report_fhir(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request, version: VersionQ = None) -> Response:
    """The latest (or a given) signed version as a FHIR R4 DiagnosticReport."""
    doc = _read_doc(rt, case_id, p, request, version, "fhir")
    return Response(to_fhir(doc).model_dump_json(exclude_none=True), media_type="application/fhir+json")


@router.get("/cases/{case_id}/report/hl7", response_class=Response,
            responses=_content("x-application/hl7-v2+er7", "HL7 v2.5 ORU^R01 (segments separated by CR)"))
def report_hl7(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request, version: VersionQ = None) -> Response:
    """The latest (or a given) signed version as an HL7 v2.5 ORU^R01 message."""
    doc = _read_doc(rt, case_id, p, request, version, "hl7")
    return Response(render_oru(doc), media_type="x-application/hl7-v2+er7")


@router.get("/cases/{case_id}/report/html", response_class=HTMLResponse, responses=READ_ERRORS)
def report_html(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request,
                version: VersionQ = None) -> HTMLResponse:
    """The report as a web page for the referrer."""
    return HTMLResponse(to_html(_read_doc(rt, case_id, p, request, version, "html")))


@router.get("/cases/{case_id}/report/pdf", response_class=Response,
            responses=_content("application/pdf", "The report as a PDF document"))
def report_pdf(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request, version: VersionQ = None) -> Response:
    """The report as a PDF document for the referrer."""
    doc = _read_doc(rt, case_id, p, request, version, "pdf")
    return Response(to_pdf(doc), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="report-{case_id}-v{doc.number}.pdf"'})

