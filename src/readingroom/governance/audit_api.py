"""HTTP edge of the audit trail: ``GET /api/v1/audit`` (search, newest first). Rules in ``audit_search.py``.

The search is itself audited ("Audit Log Used" in ATNA terms): who looked at
the trail, with which criteria, and how many records they saw.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from readingroom.governance import audit, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.audit_search import MAX_LIMIT, AuditFilter, AuditQueryError, search
from readingroom.governance.auth import Principal
from readingroom.governance.cookies import client_address

router = APIRouter(tags=["audit"])
Auditor = Annotated[Principal, Depends(require(policy.AUDIT_READ))]


class SealOut(BaseModel):
    seq: int
    mac: str
    sealed_at: str | None


class AuditItem(BaseModel):
    id: int
    at: str | None
    actor: str
    source: str
    action: str
    resource_type: str
    resource_id: str
    patient_id: str
    outcome: str
    detail: dict[str, Any] | None
    reason: str
    flagged: bool
    seal: SealOut | None = Field(description="Where the record sits in the hash chain (null: not sealed yet)")


class AuditPage(BaseModel):
    items: list[AuditItem]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null: no more")


@router.get("/audit", response_model=AuditPage)
async def search_audit(
    request: Request, rt: RuntimeDep, principal: Auditor,
    actor: Annotated[str, Query(max_length=128, description="Exact actor (username or AE title)")] = "",
    action: Annotated[str, Query(max_length=64, description="Exact action, or a prefix ending in * (study.*)")] = "",
    outcome: Annotated[str, Query(max_length=16, description="success, failure, ...")] = "",
    patient_id: Annotated[str, Query(max_length=64)] = "",
    resource_type: Annotated[str, Query(max_length=32)] = "",
    resource_id: Annotated[str, Query(max_length=128)] = "",
    flagged: Annotated[bool | None, Query(description="Only flagged (true) or unflagged (false) records")] = None,
    since: Annotated[datetime | None, Query(description="From this time on (ISO 8601 with zone)")] = None,
    until: Annotated[datetime | None, Query(description="Before this time (ISO 8601 with zone)")] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}$", description="From a previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> AuditPage:
    """Search the audit trail, newest first, one page at a time."""
    criteria = AuditFilter(actor=actor, action=action, outcome=outcome, patient_id=patient_id,
                           resource_type=resource_type, resource_id=resource_id, flagged=flagged,
                           since=since, until=until)
    try:
        items, more = await run_in_threadpool(search, rt, criteria, cursor=int(cursor) if cursor else None,
                                              limit=limit)
    except AuditQueryError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    await run_in_threadpool(
        audit.record_now, rt.db, actor=principal.username, source=client_address(request), action="audit.search",
        resource_type="audit", detail={"filters": criteria.applied(), "cursor": cursor, "returned": len(items)})
    return AuditPage(items=[AuditItem(**item) for item in items], next_cursor=str(more) if more else None)
