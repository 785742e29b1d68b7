"""Worklist queries: what a reader may read now, and the network-wide view.

A reader's list is the cases routed to them (they are a candidate and the
case is not pushed to someone else) plus the cases they have claimed,
ordered by priority (with aging) and then deadline. One indexed query, so it
stays fast with a hundred thousand open cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, and_, any_, cast, func, or_, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.governance.models import Site
from readingroom.workflow.models import Case, CaseCandidate
from readingroom.workflow.states import OPEN_STATES, CaseState


@dataclass(frozen=True)
class WorklistFilter:
    priority: str | None = None
    site: str | None = None
    modality: str | None = None
    subspecialty: str | None = None
    state: str | None = None
    limit: int = 100
    offset: int = 0


def _base() -> Select[Any]:
    return (select(Case, Study.study_uid, Patient.name, Patient.patient_id, Site.code)
            .outerjoin(Study, Study.id == Case.study_pk)
            .outerjoin(Patient, Patient.id == Case.patient_pk)
            .outerjoin(Site, Site.id == Case.site_id))


def case_row(case_id: int) -> Select[Any]:
    """One case with the columns a worklist row shows."""
    return _base().where(Case.id == case_id)


def _page(where: Any, f: WorklistFilter) -> Select[Any]:
    """Filter, order and page on ``cases`` alone, then join the display columns of just that page."""
    q = select(Case.id, Case.priority_rank, Case.deadline).where(where)
    if f.priority:
        q = q.where(Case.priority == f.priority)
    if f.site:
        q = q.where(Case.site_id == select(Site.id).where(Site.code == f.site).scalar_subquery())
    if f.modality:
        q = q.where(Case.modality == f.modality.upper())
    if f.subspecialty:
        q = q.where(Case.required_subspecialty.contains(f.subspecialty.lower()))
    if f.state:
        q = q.where(Case.state == f.state)
    order = (Case.priority_rank, Case.deadline.is_(None), Case.deadline, Case.id)
    page = q.order_by(*order).limit(f.limit).offset(f.offset).subquery()
    return (_base().join(page, page.c.id == Case.id)
            .order_by(page.c.priority_rank, page.c.deadline.is_(None), page.c.deadline, page.c.id))


def reader_worklist(session: Session, user_id: int, f: WorklistFilter | None = None) -> list[Any]:
    """Open cases this reader may claim, and the ones they own.

    Driven from the reader's candidate rows (an index on user_id), so the
    cost grows with the reader's own list, not with every open case.
    """
    f = f or WorklistFilter()
    available = and_(Case.state == CaseState.AVAILABLE.value, or_(Case.assignee.is_(None), Case.assignee == user_id))
    mine = and_(Case.claimed_by == user_id, Case.state.in_([CaseState.CLAIMED.value, CaseState.PRELIMINARY.value]))
    if session.get_bind().dialect.name == "postgresql":
        # ``id = ANY(array of my candidate ids)`` makes PostgreSQL fetch just those rows by
        # primary key; with ``IN (subquery)`` it prefers a scan of every open case.
        candidate_ids = (select(func.array_agg(CaseCandidate.case_id))
                         .where(CaseCandidate.user_id == user_id).scalar_subquery())
        offered = and_(Case.id == any_(cast(candidate_ids, ARRAY(BigInteger))), available)
    else:
        offered = and_(Case.id.in_(select(CaseCandidate.case_id).where(CaseCandidate.user_id == user_id)),
                       available)
    return list(session.execute(_page(or_(offered, mine), f)).all())


def all_cases(session: Session, f: WorklistFilter | None = None, open_only: bool = True,
              scope: ColumnElement[bool] | None = None) -> list[Any]:
    """Every case (admins) or every case of some sites (``scope``, for site supervisors)."""
    f = f or WorklistFilter()
    where = Case.state.in_([s.value for s in OPEN_STATES]) if open_only and not f.state else true()
    if scope is not None:
        where = and_(where, scope)
    return list(session.execute(_page(where, f)).all())

