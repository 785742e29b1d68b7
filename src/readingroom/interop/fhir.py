"""FHIR R4 edge at ``/fhir``: read and search six resource types, create orders, move Tasks.

Every answer is ``application/fhir+json``, errors included: the router's
route class turns each refusal (401 from authentication, 403, 404, a bad
parameter, an invalid resource) into an OperationOutcome with the reason,
because a FHIR client parses nothing else. The principal, the scoping and
the audit are the REST API's (``current_principal``, ``policy``,
``audit``): FHIR is another door to the same data, not a wider one.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from readingroom.governance import audit, policy
from readingroom.governance.api import RuntimeDep, current_principal
from readingroom.governance.auth import Principal
from readingroom.interop import fhir_queries as q
from readingroom.interop import fhir_writes
from readingroom.interop.fhir_capability import capability_statement
from readingroom.interop.fhir_search import FHIR_JSON, FhirError, outcome, parse_search, prefers_strict, searchset
from readingroom.runtime import Runtime

_ISSUE_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 409: "conflict",
                422: "processing", 429: "throttled"}


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def _outcome(status: int, diagnostics: str, code: str | None = None, expression: list[str] | None = None,
             headers: dict[str, str] | None = None) -> Response:
    return _answer(status, outcome(diagnostics, code=code or _ISSUE_CODES.get(status, "processing"),
                                   expression=expression), headers)


class FhirRoute(APIRoute):
    """Answers every refusal of a FHIR route as an OperationOutcome (authentication's 401 included)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except FhirError as exc:
                return _outcome(exc.status, exc.diagnostics, exc.code, exc.expression)
            except HTTPException as exc:
                detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
                return _outcome(exc.status_code, detail, headers=dict(exc.headers or {}))
            except RequestValidationError as exc:
                where = [".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()]
                return _outcome(400, "invalid request: " + "; ".join(
                    f"{w}: {e.get('msg')}" for w, e in zip(where, exc.errors(), strict=True)), "invalid", where)

        return fhir_handler


router = APIRouter(tags=["fhir"], route_class=FhirRoute)
Caller = Annotated[Principal, Depends(current_principal)]
_FHIR_RESPONSE = {"content": {FHIR_JSON: {}}, "description": "A FHIR resource or Bundle"}
_OUTCOME_SCHEMA = {"type": "object", "required": ["resourceType", "issue"],
                   "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                                  "issue": {"type": "array", "items": {"type": "object"}}}}
_WHY = {400: "Bad search parameter, or a body that is not JSON or not a valid resource (issue.expression: where)",
        401: "No, malformed, expired or revoked credentials", 403: "Not allowed (role, site, relationship)",
        404: "No such resource, or none the caller may see", 409: "No case transition leads there / a duplicate",
        422: "A valid resource the order service refuses (business rule)"}
_BODY = {"requestBody": {"required": True, "content": {FHIR_JSON: {"schema": {"type": "object"}},
                                                       "application/json": {"schema": {"type": "object"}}}}}


def _answers(*statuses: int, ok: int = 200) -> dict[int | str, dict[str, Any]]:
    """The route's documented answers: every error is an OperationOutcome in application/fhir+json."""
    out: dict[int | str, dict[str, Any]] = {ok: _FHIR_RESPONSE}
    for status in statuses:
        out[status] = {"description": _WHY[status], "content": {FHIR_JSON: {"schema": _OUTCOME_SCHEMA}}}
    return out


def _root(rt: Runtime, request: Request) -> str:
    return (rt.settings.public_url or str(request.base_url)).rstrip("/")


def _context(s: Any, rt: Runtime, request: Request, principal: Principal) -> q.Context:
    return q.Context(s, principal, _root(rt, request) + "/dicomweb")


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _audit(rt: Runtime, request: Request, principal: Principal, action: str, kind: str, ident: str,
           patients: list[str], detail: dict[str, Any]) -> None:
    """Reads of patient data go to the audit trail like the REST API's (queued, written in batches)."""
    distinct = sorted({p for p in patients if p})
    audit.record_soon(rt.db, actor=principal.username, source=_source(request), action=action,
                      resource_type=f"fhir.{kind}", resource_id=ident,
                      patient_id=distinct[0] if len(distinct) == 1 else "",
                      detail={**detail, **({"patients": distinct[:50]} if len(distinct) > 1 else {})})


# -- metadata ---------------------------------------------------------------------------------------------------


@router.get("/metadata", responses={200: _FHIR_RESPONSE}, response_class=Response)
def metadata(rt: RuntimeDep, request: Request) -> Response:
    """The CapabilityStatement (public: it holds no patient data, and clients read it before signing in)."""
    return _answer(200, capability_statement(_root(rt, request) + "/fhir"))


# -- reads and searches -----------------------------------------------------------------------------------------


def _may_read(principal: Principal) -> None:
    """The route-level gate (archive.read); what each caller then sees is scoped per resource."""
    if not policy.allowed(principal, policy.ARCHIVE_READ):
        raise FhirError(403, "not allowed: archive.read", "forbidden")


def _search(kind: q.Kind, rt: Runtime, request: Request, principal: Principal) -> Response:
    _may_read(principal)
    req = parse_search(list(request.query_params.multi_items()), kind.params,
                       strict=prefers_strict(request.headers.get("prefer")))
    with rt.db.read_session() as s:
        resources, total, patients = q.search(_context(s, rt, request, principal), kind, req)
    _audit(rt, request, principal, "fhir.search", kind.name, "", patients,
           {"params": req.params, "total": total, "returned": len(resources)})
    return _answer(200, searchset(_root(rt, request) + "/fhir", kind.name, req, resources, total))


def _read(kind: q.Kind, ident: str, rt: Runtime, request: Request, principal: Principal) -> Response:
    _may_read(principal)
    with rt.db.read_session() as s:
        found = q.read(_context(s, rt, request, principal), kind, ident)
    if found is None:
        raise FhirError(404, f"{kind.name}/{ident} is not known (or not visible to you)", "not-found")
    resource, patient = found
    _audit(rt, request, principal, "fhir.read", kind.name, ident, [patient], {})
    headers = {"ETag": f'W/"{resource.get("meta", {}).get("versionId", "1")}"'}
    if resource.get("meta", {}).get("lastUpdated"):
        headers["Last-Modified"] = resource["meta"]["lastUpdated"]
    return _answer(200, resource, headers)


def _search_route(path: str, kind: q.Kind) -> None:
    def search(rt: RuntimeDep, request: Request, principal: Caller) -> Response:
        return _search(kind, rt, request, principal)

    search.__doc__ = f"Search {kind.name}: a searchset Bundle of what the caller may see."
    router.add_api_route(f"/{path}", search, methods=["GET"], responses=_answers(400, 401, 403),
                         name=f"fhir_search_{path}", response_class=Response)


for _kind in q.KINDS.values():
    _search_route(_kind.name, _kind)

# Reads: the path parameters are named as in the REST API (study, order_id, case_id, result_id).
_READ: dict[str, Any] = {"responses": _answers(401, 403, 404), "response_class": Response}


@router.get("/Patient/{patient_pk}", **_READ)
def read_patient(patient_pk: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Read one Patient (id = the archive's patient row)."""
    return _read(q.PATIENT, patient_pk, rt, request, principal)


@router.get("/ImagingStudy/{study}", **_READ)
def read_imaging_study(study: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Read one ImagingStudy (id = Study Instance UID), with series, instances and its DICOMweb endpoint."""
    return _read(q.IMAGING_STUDY, study, rt, request, principal)


@router.get("/ServiceRequest/{order_id}", **_READ)
def read_service_request(order_id: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Read one ServiceRequest (id = the order)."""
    return _read(q.SERVICE_REQUEST, order_id, rt, request, principal)


@router.get("/DiagnosticReport/{report_id}", **_READ)
def read_diagnostic_report(report_id: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Read the latest signed report of a case (id = report-{case id})."""
    return _read(q.DIAGNOSTIC_REPORT, report_id, rt, request, principal)


@router.get("/Task/{case_id}", **_READ)
def read_task(case_id: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Read one Task (id = the case)."""
    return _read(q.TASK, case_id, rt, request, principal)


@router.get("/Communication/{result_id}", **_READ)
def read_communication(result_id: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Read one Communication (id = the critical result)."""
    return _read(q.COMMUNICATION, result_id, rt, request, principal)


# -- writes -----------------------------------------------------------------------------------------------------


async def _json(request: Request) -> Any:
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, f"the body is not JSON: {exc}", "structure") from None


@router.post("/ServiceRequest", status_code=201, responses=_answers(400, 401, 403, 409, 422, ok=201),
             response_class=Response, openapi_extra=_BODY)
async def create_service_request(rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Place an order (a waiting case), as HL7 ORM would: the same rules, source 'fhir'."""
    if not policy.allowed(principal, policy.ORDERS_WRITE):
        raise FhirError(403, "not allowed: orders.write", "forbidden")
    body = await _json(request)
    order_id = await run_in_threadpool(fhir_writes.create_order, rt, principal, body)
    return await run_in_threadpool(_created, rt, request, principal, order_id)


def _created(rt: Runtime, request: Request, principal: Principal, order_id: int) -> Response:
    response = _read(q.SERVICE_REQUEST, str(order_id), rt, request, principal)
    response.status_code = 201
    response.headers["Location"] = f"{_root(rt, request)}/fhir/ServiceRequest/{order_id}"
    return response


@router.put("/ServiceRequest/{order_id}", responses=_answers(400, 401, 403, 404, 409, 422),
            response_class=Response, openapi_extra=_BODY)
async def update_service_request(order_id: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Change an order, or cancel it with ``status: revoked`` (its open case is cancelled)."""
    if not policy.allowed(principal, policy.ORDERS_WRITE):
        raise FhirError(403, "not allowed: orders.write", "forbidden")
    body = await _json(request)
    await run_in_threadpool(fhir_writes.update_order, rt, principal, order_id, body)
    return await run_in_threadpool(_read, q.SERVICE_REQUEST, order_id, rt, request, principal)


@router.put("/Task/{case_id}", responses=_answers(400, 401, 403, 404, 409), response_class=Response,
            openapi_extra=_BODY)
async def update_task(case_id: str, rt: RuntimeDep, request: Request, principal: Caller) -> Response:
    """Move a case by its Task status: in-progress claims, ready releases, completed, cancelled (409 if no
    transition leads there). Other elements of the Task are not stored."""
    if not policy.allowed(principal, policy.WORKLIST_READ):
        raise FhirError(403, "not allowed: worklist.read", "forbidden")
    body = await _json(request)
    await run_in_threadpool(fhir_writes.update_task, rt, principal, case_id, body)
    return await run_in_threadpool(_read, q.TASK, case_id, rt, request, principal)
