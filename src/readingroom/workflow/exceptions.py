"""The exception queue: work a person must look at.

Kinds: ``no_eligible_reader``, ``unreadable_study``, ``incomplete_study``,
``order_mismatch``, ``stuck_case``, ``failed_delivery``. An open item of a
kind is raised at most once per case, so a scheduler running every few
seconds does not flood the queue.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.workflow.models import ExceptionItem

KINDS = ("no_eligible_reader", "unreadable_study", "incomplete_study", "order_mismatch", "stuck_case",
         "failed_delivery", "protocol_mismatch", "referral_overdue", "order_overdue", "duplicate_study",
         "duplicate_accession")


class ExceptionNotFound(LookupError):
    pass


def raise_item(session: Session, *, kind: str, reason: str, case_id: int | None = None,
               study_uid: str = "") -> ExceptionItem | None:
    """Open an item unless the same case already has an open one of this kind."""
    if case_id is not None:
        existing = session.scalars(select(ExceptionItem).where(
            ExceptionItem.case_id == case_id, ExceptionItem.kind == kind, ExceptionItem.state == "open")).first()
        if existing is not None:
            return None
    item = ExceptionItem(case_id=case_id, study_uid=study_uid, kind=kind, reason=reason, state="open",
                         created_at=utcnow())
    session.add(item)
    session.flush()
    return item


def list_items(session: Session, *, state: str | None = "open", kind: str | None = None,
               limit: int = 200, scope: ColumnElement[bool] | None = None) -> list[ExceptionItem]:
    """Items of the queue, newest first; ``scope`` limits them (a site supervisor's sites)."""
    q = select(ExceptionItem)
    if scope is not None:
        q = q.where(scope)
    if state:
        q = q.where(ExceptionItem.state == state)
    if kind:
        q = q.where(ExceptionItem.kind == kind)
    return list(session.scalars(q.order_by(ExceptionItem.id.desc()).limit(limit)))


def resolve(session: Session, item_id: int, *, actor: str, resolution: str) -> ExceptionItem:
    item = session.get(ExceptionItem, item_id)
    if item is None:
        raise ExceptionNotFound(f"no exception item {item_id}")
    if item.state != "open":
        raise ValueError(f"exception item {item_id} is already {item.state}")
    item.state = "resolved"
    item.resolved_at = utcnow()
    item.resolved_by = actor
    item.resolution = resolution
    return item


def resolve_for_case(session: Session, case_id: int, *, actor: str, resolution: str) -> int:
    """Close every open item of a case (it was rerouted or assigned)."""
    items = session.scalars(select(ExceptionItem).where(ExceptionItem.case_id == case_id,
                                                        ExceptionItem.state == "open")).all()
    for item in items:
        item.state, item.resolved_at, item.resolved_by, item.resolution = "resolved", utcnow(), actor, resolution
    return len(items)
