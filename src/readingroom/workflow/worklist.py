"""Worklist queries: what a reader may read now, and the network-wide view.

A reader's list is the cases routed to them (they are a candidate and the
case is not pushed to someone else) plus the cases they have claimed,
ordered by priority (with aging) and then deadline. One indexed query, so it
stays fast with a hundred thousand open cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, or_, select, union_all
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


def _filtered(q: Select[Any], f: WorklistFilter) -> Select[Any]:
    if f.priority:
        q = q.where(Case.priority == f.priority)
    if f.site:
        q = q.where(Site.code == f.site)
    if f.modality:
        q = q.where(Case.modality == f.modality.upper())
    if f.subspecialty:
        q = q.where(Case.required_subspecialty.contains(f.subspecialty.lower()))
    if f.state:
        q = q.where(Case.state == f.state)
    return q.order_by(Case.priority_rank, Case.deadline.is_(None), Case.deadline, Case.id).limit(f.limit).offset(
        f.offset)


def reader_worklist(session: Session, user_id: int, f: WorklistFilter | None = None) -> list[Any]:
    """Open cases this reader may claim, and the ones they own.

    Driven from the reader's candidate rows (an index on user_id), so the
    cost grows with the reader's own list, not with every open case.
    """
    f = f or WorklistFilter()
    offered = (select(Case.id).join(CaseCandidate, CaseCandidate.case_id == Case.id)
               .where(CaseCandidate.user_id == user_id, Case.state == CaseState.AVAILABLE.value,
                      or_(Case.assignee.is_(None), Case.assignee == user_id)))
    mine = select(Case.id).where(Case.claimed_by == user_id,
                                 Case.state.in_([CaseState.CLAIMED.value, CaseState.PRELIMINARY.value]))
    ids = union_all(offered, mine).subquery()
    return list(session.execute(_filtered(_base().where(Case.id.in_(select(ids.c.id))), f)).all())


def all_cases(session: Session, f: WorklistFilter | None = None, open_only: bool = True) -> list[Any]:
    """Every case (admins, supervisors): the network-wide view."""
    f = f or WorklistFilter()
    q = _base()
    if open_only and not f.state:
        q = q.where(Case.state.in_([s.value for s in OPEN_STATES]))
    return list(session.execute(_filtered(q, f)).all())


def can_see(session: Session, case: Case, user_id: int) -> bool:
    """A reader sees a case routed to them, claimed or assigned to them."""
    if case.claimed_by == user_id or case.assignee == user_id:
        return True
    return session.scalar(select(CaseCandidate.id).where(CaseCandidate.case_id == case.id,
                                                         CaseCandidate.user_id == user_id).limit(1)) is not None
