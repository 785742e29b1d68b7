"""REST edge of procedure normalisation: canonical procedures, site mappings, CSV import, the unmapped list.

Who may do what (deny by default, ``interop.admin`` for every change):

* any signed-in user lists and reads the canonical procedures (a catalogue,
  no patient data: readers see the codes routing and worklists show);
* network administrators create, change and delete procedures, and manage
  mappings of every scope, network-wide (``*``) included;
* site administrators manage the mappings of their own sites, see the
  network-wide ones, and see the unmapped descriptions of their sites only.

The service modules (:mod:`.procedures`, :mod:`.procedure_mappings`,
:mod:`.procedures_csv`) validate, scope and audit; this module maps their
errors onto statuses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.governance import policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.interop import procedure_mappings as mappings
from readingroom.interop import procedures, procedures_csv
from readingroom.interop.models import Procedure, ProcedureMapping
from readingroom.runtime import Runtime

router = APIRouter(tags=["procedures"])
InteropAdmin = Annotated[Principal, Depends(require(policy.INTEROP_ADMIN))]
_STATUS: dict[type[Exception], int] = {procedures.ProcedureNotFound: 404, procedures.ProcedureConflict: 409,
                                       procedures.ScopeForbidden: 403}
CSV_TYPES = ("text/csv", "text/plain", "application/csv")


def _error(exc: procedures.ProcedureError) -> HTTPException:
    return HTTPException(status_code=_STATUS.get(type(exc), 422), detail=str(exc))


def _scopes(session: Session, principal: Principal) -> procedures.Scopes:
    """The mapping scopes the caller manages: None (network admin: all and '*'), else their sites' codes."""
    sites = policy.sites_where(principal, policy.INTEROP_ADMIN)
    return None if sites is None else mappings.site_codes(session, sites)


def _network_admin(principal: Principal) -> None:
    if policy.sites_where(principal, policy.INTEROP_ADMIN) is not None:
        raise HTTPException(status_code=403, detail="only network administrators change the canonical procedures")


class ProcedureFields(BaseModel):
    name: str = Field(min_length=1, max_length=255)
    modality: str = Field(default="", max_length=16, description="DICOM modality, e.g. CT")
    body_part: str = Field(default="", max_length=64, description="DICOM Body Part Examined term, e.g. HEAD")
    radlex_code: str = Field(default="", max_length=32, description="RadLex Playbook id, e.g. RPID22")
    loinc_code: str = Field(default="", max_length=32, description="LOINC code with check digit, e.g. 30799-1")


class ProcedureIn(ProcedureFields):
    code: str = Field(min_length=1, max_length=64, description="canonical code, e.g. CT-HEAD-WO (stored upper case)")


class ProcedureOut(ProcedureIn):
    created_at: datetime

    @classmethod
    def of(cls, p: Procedure) -> ProcedureOut:
        return cls.model_validate(p, from_attributes=True)


class MappingIn(BaseModel):
    scope: str = Field(default="*", max_length=32, description="a site code, or '*' for every site")
    source: str = Field(default="description", description="'description' (Study Description / order text) "
                        "or 'code' (the site's procedure code)")
    value: str = Field(min_length=1, max_length=255, description="the site's description or code (normalised)")
    procedure_code: str = Field(min_length=1, max_length=64)


class MappingOut(BaseModel):
    id: int
    scope: str
    source: str
    value: str
    procedure_code: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, m: ProcedureMapping, code: str) -> MappingOut:
        return cls(id=m.id, scope=m.scope, source=m.source, value=m.value, procedure_code=code,
                   created_at=m.created_at, created_by=m.created_by)


class MappingCreated(MappingOut):
    cases_classified: int = Field(description="cases without a procedure that this mapping classified at once")


class UnmappedOut(BaseModel):
    site: str
    description: str
    code: str
    cases: int = Field(description="cases (open or closed) with no canonical procedure")
    orders: int = Field(description="active orders among them")
    last_seen: datetime | None


class ImportRow(BaseModel):
    line: int
    key: str
    outcome: str = Field(description="created | updated | skipped | error")
    reason: str


class ImportOut(BaseModel):
    kind: str = Field(description="procedures | mappings (told by the header row)")
    applied: bool
    counts: dict[str, int]
    cases_classified: int
    rows: list[ImportRow]


# -- procedures -----------------------------------------------------------------------------------------------


@router.get("/procedures", response_model=list[ProcedureOut])
def get_procedures(rt: RuntimeDep, p: PrincipalDep,
                   q: Annotated[str, Query(max_length=64, description="search in code and name")] = "",
                   modality: Annotated[str, Query(max_length=16)] = "") -> list[ProcedureOut]:
    """The canonical procedures, by code."""
    with rt.db.read_session() as s:
        return [ProcedureOut.of(x) for x in procedures.list_procedures(s, q=q, modality=modality)]


@router.post("/procedures", response_model=ProcedureOut, status_code=201, responses={
    409: error_response("A procedure with this code exists")})
def post_procedure(body: ProcedureIn, rt: RuntimeDep, p: InteropAdmin) -> ProcedureOut:
    """Add a canonical procedure (network administrators)."""
    _network_admin(p)
    with rt.db.session() as s:
        try:
            row = procedures.create_procedure(s, procedures.ProcedureInput(**body.model_dump()), actor=p.username)
        except procedures.ProcedureError as exc:
            raise _error(exc) from exc
        return ProcedureOut.of(row)


@router.get("/procedures/{code}", response_model=ProcedureOut)
def get_procedure(code: str, rt: RuntimeDep, p: PrincipalDep) -> ProcedureOut:
    with rt.db.read_session() as s:
        try:
            return ProcedureOut.of(procedures.get_procedure(s, code))
        except procedures.ProcedureError as exc:
            raise _error(exc) from exc


@router.put("/procedures/{code}", response_model=ProcedureOut)
def put_procedure(code: str, body: ProcedureFields, rt: RuntimeDep, p: InteropAdmin) -> ProcedureOut:
    """Change a procedure's name, modality, body part, RadLex or LOINC code (its code stays)."""
    _network_admin(p)
    with rt.db.session() as s:
        try:
            row = procedures.update_procedure(s, code, procedures.ProcedureInput(code=code, **body.model_dump()),
                                              actor=p.username)
        except procedures.ProcedureError as exc:
            raise _error(exc) from exc
        return ProcedureOut.of(row)


@router.delete("/procedures/{code}", status_code=204)
def delete_procedure(code: str, rt: RuntimeDep, p: InteropAdmin) -> Response:
    """Delete a procedure and its mappings (cases keep the code they were given)."""
    _network_admin(p)
    with rt.db.session() as s:
        try:
            procedures.delete_procedure(s, code, actor=p.username)
        except procedures.ProcedureError as exc:
            raise _error(exc) from exc
    return Response(status_code=204)


# -- mappings -------------------------------------------------------------------------------------------------


@router.get("/procedure-mappings", response_model=list[MappingOut])
def get_mappings(rt: RuntimeDep, p: InteropAdmin,
                 scope: Annotated[str, Query(max_length=32, description="only this scope")] = "",
                 procedure: Annotated[str, Query(max_length=64, description="only to this procedure")] = "",
                 ) -> list[MappingOut]:
    """Mappings of the caller's sites and the network-wide ones."""
    with rt.db.read_session() as s:
        rows = mappings.list_mappings(s, visible=_scopes(s, p), scope=scope, procedure_code=procedure)
        return [MappingOut.of(m, c) for m, c in rows]


@router.post("/procedure-mappings", response_model=MappingCreated, status_code=201, responses={
    409: error_response("This scope, source and value are mapped already")})
def post_mapping(body: MappingIn, rt: RuntimeDep, p: InteropAdmin) -> MappingCreated:
    """Map a site's description or code (or every site's: scope '*') to a canonical procedure.

    Cases still without a procedure that the mapping covers are classified at once.
    """
    with rt.db.session() as s:
        try:
            row, applied = mappings.create_mapping(s, mappings.MappingInput(**body.model_dump()), actor=p.username,
                                                   allowed=_scopes(s, p))
        except procedures.ProcedureError as exc:
            raise _error(exc) from exc
        return MappingCreated(**MappingOut.of(row, procedures.get_procedure(s, body.procedure_code).code)
                              .model_dump(), cases_classified=applied)


@router.delete("/procedure-mappings/{mapping_id}", status_code=204)
def delete_mapping(mapping_id: int, rt: RuntimeDep, p: InteropAdmin) -> Response:
    with rt.db.session() as s:
        try:
            mappings.delete_mapping(s, mapping_id, actor=p.username, allowed=_scopes(s, p))
        except procedures.ProcedureError as exc:
            raise _error(exc) from exc
    return Response(status_code=204)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail=f"the file is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"the file is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _import(rt: Runtime, p: Principal, data: bytes) -> ImportOut:
    with rt.db.session() as s:
        try:
            report = procedures_csv.import_csv(s, procedures_csv.read_upload(data), actor=p.username,
                                               allowed=_scopes(s, p))
        except procedures_csv.ImportRejected as exc:
            bad = [r for r in exc.report.as_dict()["rows"] if r["outcome"] == "error"]
            detail: dict[str, Any] = {"message": str(exc), "rows": bad}
            raise HTTPException(status_code=403 if exc.forbidden else 400, detail=detail) from exc
        except procedures.ProcedureError as exc:  # a concurrent change: 409, nothing imported
            raise _error(exc) from exc
        return ImportOut.model_validate(report.as_dict())


@router.post("/procedure-mappings/import", response_model=ImportOut, responses={
    400: error_response("A row is invalid: the file was rejected whole, nothing imported (every bad row listed)"),
    409: error_response("The same rows changed meanwhile (a concurrent import): nothing imported, send it again"),
    403: error_response("A row's scope is not one of the caller's sites (or procedures by a site admin)"),
    413: error_response("The file is larger than procedures_import_max_bytes"),
    415: error_response("The body is not text/csv")},
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def import_mappings(request: Request, rt: RuntimeDep, p: InteropAdmin) -> ImportOut:
    """Import a CSV of mappings (``scope,source,value,procedure_code``) or procedures
    (``code,name,modality,body_part,radlex,loinc``): all rows or none, with a per-row report."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in CSV_TYPES:
        raise HTTPException(status_code=415, detail=f"send the file as text/csv, not {media or 'no content type'}")
    data = await _read_limited(request, rt.settings.procedures_import_max_bytes)
    return await run_in_threadpool(_import, rt, p, data)


@router.get("/procedure-mappings/unmapped", response_model=list[UnmappedOut])
def get_unmapped(rt: RuntimeDep, p: InteropAdmin,
                 limit: Annotated[int, Query(ge=1, le=5000)] = 200) -> list[UnmappedOut]:
    """Descriptions and codes of the caller's sites that no mapping covers, most frequent first."""
    sites = policy.sites_where(p, policy.INTEROP_ADMIN)
    with rt.db.read_session() as s:
        rows = mappings.unmapped(s, site_ids=sites, limit=limit)
        return [UnmappedOut.model_validate(r, from_attributes=True) for r in rows]
