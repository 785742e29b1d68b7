"""Duplicate-study detection: reported for a person, never merged.

Two things look like one study twice:

* the same Study Instance UID sent by two sites (a study shared by CD, a
  PACS migration, a UID generator gone wrong): ingest notes an instance
  whose site differs from its study's site as a ``study.other_site`` domain
  event and keeps the instance as received;
* the same accession number on two studies of one site (or, for studies
  without a site, one issuer of patient IDs): an accession names one order,
  so two studies under it are a RIS or modality error.

A background job reads those events and ``study.complete`` behind a
consumer offset (locked: several processes take turns) and raises
``duplicate_study`` / ``duplicate_accession`` exception items naming both
sites or both UIDs. The reason text is built from the sorted pair, so one
open item exists per pair however often the duplicate is seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from readingroom.archive.index import STUDY_OTHER_SITE
from readingroom.archive.models import DomainEvent, Patient, Study
from readingroom.archive.stability import STUDY_COMPLETE
from readingroom.consumers import consume
from readingroom.governance.models import Site
from readingroom.runtime import Runtime
from readingroom.workflow import exceptions
from readingroom.workflow.models import ExceptionItem

CONSUMER = "interop.duplicates"
KINDS = ("duplicate_study", "duplicate_accession")


def _site_label(session: Session, site_id: int | None) -> str:
    row = session.execute(select(Site.code, Site.name).where(Site.id == site_id)).first() if site_id else None
    return f"{row.code} ({row.name})" if row else f"site {site_id}"


def _report(session: Session, kind: str, study_uid: str, reason: str) -> bool:
    """Raise an item unless the same pair already has an open one (the reason names the pair)."""
    open_item = session.scalar(select(ExceptionItem.id).where(
        ExceptionItem.kind == kind, ExceptionItem.state == "open", ExceptionItem.reason == reason).limit(1))
    if open_item is not None:
        return False
    exceptions.raise_item(session, kind=kind, reason=reason, study_uid=study_uid)
    return True


def report_other_site(session: Session, study_uid: str, payload: dict[str, Any]) -> bool:
    """A study's instance came from a second site: one open ``duplicate_study`` item per (study, site)."""
    first, second = payload.get("study_site_id"), payload.get("site_id")
    if first is None or second is None or first == second:
        return False
    reason = (f"Study Instance UID {study_uid} arrived from two sites: {_site_label(session, first)} first, then "
              f"{_site_label(session, second)}; the archive keeps the instances as received")
    return _report(session, "duplicate_study", study_uid, reason)


def report_same_accession(session: Session, study_uid: str) -> int:
    """Other studies with this study's accession number at its site (or its issuer): one item per pair."""
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None or not study.accession_number:
        return 0
    q = select(Study.study_uid).where(Study.accession_number == study.accession_number, Study.id != study.id)
    if study.site_id is not None:
        q = q.where(Study.site_id == study.site_id)
        scope = f"site {_site_label(session, study.site_id)}"
    else:
        issuer = session.scalar(select(Patient.issuer).where(Patient.id == study.patient_pk)) or ""
        q = q.join(Patient, Patient.id == Study.patient_pk).where(Study.site_id.is_(None), Patient.issuer == issuer)
        scope = f"issuer {issuer or '(none)'}"
    raised = 0
    for other in session.scalars(q.order_by(Study.id)).all():
        low, high = sorted((study_uid, other))
        reason = f"accession number {study.accession_number} is on two studies of {scope}: {low} and {high}"
        raised += _report(session, "duplicate_accession", study_uid, reason)
    return raised


def scan(rt: Runtime, batch: int = 500) -> int:
    """Background job: report duplicates seen since the last run; returns the items raised."""
    return consume(rt, CONSUMER, _events_after, _report_event, batch=batch)


def _events_after(session: Session, position: int, batch: int) -> Sequence[Any]:
    return session.execute(select(DomainEvent.id, DomainEvent.kind, DomainEvent.subject, DomainEvent.payload)
                           .where(DomainEvent.id > position, DomainEvent.kind.in_([STUDY_OTHER_SITE, STUDY_COMPLETE]))
                           .order_by(DomainEvent.id).limit(batch)).all()


def _report_event(session: Session, row: Any) -> int:
    _, kind, subject, payload = row
    if kind == STUDY_OTHER_SITE:
        return report_other_site(session, subject, payload or {})
    return report_same_accession(session, subject)


def list_duplicates(session: Session, *, state: str | None = "open", kind: str | None = None,
                    scope: ColumnElement[bool] | None = None, limit: int = 200) -> list[ExceptionItem]:
    """The duplicate reports of the exception queue, newest first (``scope``: an admin's sites)."""
    q = select(ExceptionItem).where(ExceptionItem.kind.in_([kind] if kind else list(KINDS)))
    if scope is not None:
        q = q.where(scope)
    if state:
        q = q.where(ExceptionItem.state == state)
    return list(session.scalars(q.order_by(ExceptionItem.id.desc()).limit(limit)))
