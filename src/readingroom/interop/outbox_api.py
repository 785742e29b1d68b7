"""REST edge of the outbox: what is queued, delivered or failed, and the admin's retry and cancel.

Items are scoped through their destination: a site admin sees the items of
their sites' destinations; an item they may not see answers 404. The
listing leaves the payload out (it carries patient data); reading one item
shows it and is audited as a read of patient data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.governance import audit, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.interop import outbox
from readingroom.interop.models import Destination, OutboxItem

router = APIRouter(prefix="/interop", tags=["interop"])
InteropAdmin = Annotated[Principal, Depends(require(policy.INTEROP_ADMIN))]


class OutboxItemOut(BaseModel):
    id: int
    destination: str
    operation: str
    state: str = Field(description="pending, delivered, failed, cancelled")
    control_id: str
    case_id: int | None
    study_uid: str
    attempts: int
    next_attempt_at: datetime
    leased_until: datetime | None
    last_error: str
    result: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None
    payload: str | None = Field(default=None, description="The message or work description (single item only)")


class OutboxPage(BaseModel):
    items: list[OutboxItemOut]
    total: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one")


def _names(s: Session) -> dict[int, tuple[str, int | None]]:
    return {i: (n, site) for i, n, site in s.execute(select(Destination.id, Destination.name, Destination.site_id))}


def _out(item: OutboxItem, name: str, payload: bool = False) -> OutboxItemOut:
    return OutboxItemOut(id=item.id, destination=name, operation=item.operation, state=item.state,
                         control_id=item.control_id, case_id=item.case_id, study_uid=item.study_uid,
                         attempts=item.attempts, next_attempt_at=item.next_attempt_at, leased_until=item.leased_until,
                         last_error=item.last_error, result=item.result or {}, created_at=item.created_at,
                         delivered_at=item.delivered_at, payload=item.payload if payload else None)


def _scope(principal: Principal, names: dict[int, tuple[str, int | None]]) -> list[int] | None:
    sites = policy.sites_where(principal, policy.INTEROP_ADMIN)
    if sites is None:
        return None
    return [i for i, (_, site) in names.items() if site is not None and site in sites]


def _visible(s: Session, principal: Principal, item_id: int) -> tuple[OutboxItem, str]:
    item = s.get(OutboxItem, item_id)
    names = _names(s)
    if item is None or item.destination_id not in names or not policy.at_site(
            principal, policy.INTEROP_ADMIN, names[item.destination_id][1]):
        raise HTTPException(status_code=404, detail=f"no outbox item {item_id}")
    return item, names[item.destination_id][0]


@router.get("/outbox", response_model=OutboxPage)
def list_outbox(rt: RuntimeDep, principal: InteropAdmin, destination: str = "",
                state: Annotated[str, Query(pattern="^(|pending|delivered|failed|cancelled)$")] = "",
                case_id: int | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> OutboxPage:
    """Outbox items, newest first, filtered by destination name, state and case (paged by offset)."""
    with rt.db.read_session() as s:
        names = _names(s)
        scope = _scope(principal, names)
        if destination:
            wanted = [i for i, (n, _) in names.items() if n == destination]
            scope = [i for i in wanted if scope is None or i in scope]
        rows, total = outbox.list_items(s, destination_ids=scope, state=state, case_id=case_id, limit=limit,
                                        offset=offset)
        items = [_out(r, names[r.destination_id][0]) for r in rows]
    more = offset + len(items) < total
    return OutboxPage(items=items, total=total, next_offset=offset + len(items) if more else None)


@router.get("/outbox/{item_id}", response_model=OutboxItemOut)
def get_outbox_item(item_id: int, rt: RuntimeDep, principal: InteropAdmin) -> OutboxItemOut:
    """One item with its payload (audited: an ORU carries the report and the patient's identity)."""
    with rt.db.read_session() as s:
        item, name = _visible(s, principal, item_id)
        out = _out(item, name, payload=True)
    audit.record_soon(rt.db, actor=principal.username, action="interop.outbox.read", resource_type="outbox_item",
                      resource_id=str(item_id), detail={"case_id": out.case_id, "study_uid": out.study_uid})
    return out


def _act(rt: Any, principal: Principal, item_id: int, action: str) -> OutboxItemOut:
    with rt.db.session() as s:
        _, name = _visible(s, principal, item_id)
        try:
            item = outbox.retry(s, item_id) if action == "retry" else outbox.cancel(s, item_id)
        except outbox.OutboxError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        audit.record(s, actor=principal.username, action=f"interop.outbox.{action}", resource_type="outbox_item",
                     resource_id=str(item_id), detail={"destination": name, "case_id": item.case_id})
        return _out(item, name)


@router.post("/outbox/{item_id}/retry", response_model=OutboxItemOut,
             responses={409: error_response("The item is delivered or cancelled")})
def retry_item(item_id: int, rt: RuntimeDep, principal: InteropAdmin) -> OutboxItemOut:
    """Deliver a failed or waiting item now (it goes back to pending, due at once)."""
    return _act(rt, principal, item_id, "retry")


@router.post("/outbox/{item_id}/cancel", response_model=OutboxItemOut,
             responses={409: error_response("The item is delivered or cancelled")})
def cancel_item(item_id: int, rt: RuntimeDep, principal: InteropAdmin) -> OutboxItemOut:
    """Never deliver this item; the items queued behind it move on."""
    return _act(rt, principal, item_id, "cancel")
