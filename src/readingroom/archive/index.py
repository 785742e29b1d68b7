"""Upserts of the patient / study / series levels, safe under concurrency.

Several associations (or processes) may deliver instances of one study at
once. Each level row is created with ``INSERT ... ON CONFLICT DO NOTHING``
and then read back, and counters move with ``UPDATE ... SET n = n + 1``, so
no read-then-write race can create two rows or lose an increment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from readingroom.archive.models import DomainEvent, Patient, Series, Study
from readingroom.archive.parsing import ParsedInstance


def insert_for(session: Session, model: Any) -> Any:
    """A dialect-specific INSERT that supports ON CONFLICT (PostgreSQL and SQLite)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def _text(ds: Any, keyword: str, limit: int = 64) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit]


def _int(ds: Any, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def upsert_patient(session: Session, p: ParsedInstance, now: datetime, default_issuer: str = "") -> int:
    """The patient row of an instance; ``default_issuer`` (its site's) when it names no Issuer of Patient ID,
    since a bare Patient ID means nothing across sites (interop.identity)."""
    ds = p.dataset
    pid = _text(ds, "PatientID")
    issuer = _text(ds, "IssuerOfPatientID") or default_issuer[:64]
    values = {
        "patient_id": pid,
        "issuer": issuer,
        "name": _text(ds, "PatientName", 324),
        "birth_date": _text(ds, "PatientBirthDate", 8),
        "sex": _text(ds, "PatientSex", 16),
        "attrs": p.level_attrs["PATIENT"],
        "created_at": now,
        "updated_at": now,
    }
    session.execute(insert_for(session, Patient).values(**values).on_conflict_do_nothing())
    pk, merged_into = session.execute(
        select(Patient.id, Patient.merged_into_pk).where(Patient.patient_id == pid, Patient.issuer == issuer)
    ).one()
    # A record an ADT^A40 merged away: new images of it belong to the surviving record.
    seen = {pk}
    while merged_into is not None and merged_into not in seen:
        seen.add(merged_into)
        pk, merged_into = session.execute(
            select(Patient.id, Patient.merged_into_pk).where(Patient.id == merged_into)
        ).one()
    return pk


def upsert_study(
    session: Session, p: ParsedInstance, patient_pk: int, site_id: int | None, now: datetime
) -> int:
    ds = p.dataset
    values = {
        "study_uid": p.study_uid,
        "patient_pk": patient_pk,
        "study_date": _text(ds, "StudyDate", 8),
        "study_time": _text(ds, "StudyTime", 16),
        "accession_number": _text(ds, "AccessionNumber"),
        "study_id": _text(ds, "StudyID", 16),
        "description": _text(ds, "StudyDescription"),
        "referring_physician": _text(ds, "ReferringPhysicianName", 324),
        "institution_name": _text(ds, "InstitutionName"),
        "site_id": site_id,
        "state": "receiving",
        "first_received_at": now,
        "last_received_at": now,
        "attrs": p.level_attrs["STUDY"],
    }
    session.execute(insert_for(session, Study).values(**values).on_conflict_do_nothing())
    return session.scalars(select(Study.id).where(Study.study_uid == p.study_uid)).one()


#: Domain event: an instance of a known study arrived from another site than the study's (duplicate-study
#: detection in interop.duplicates reports it; the archive keeps the instance as received).
STUDY_OTHER_SITE = "study.other_site"


def note_study_site(session: Session, study_pk: int, site_id: int | None, source: str, now: datetime) -> None:
    """Record a domain event when the study was first received from another site than ``site_id``."""
    if site_id is None:
        return
    row = session.execute(select(Study.study_uid, Study.site_id).where(Study.id == study_pk)).first()
    if row is None or row.site_id is None or row.site_id == site_id:
        return
    session.add(DomainEvent(kind=STUDY_OTHER_SITE, subject=row.study_uid, created_at=now,
                            payload={"study_site_id": row.site_id, "site_id": site_id, "source": source[:128]}))
    session.flush()


def upsert_series(session: Session, p: ParsedInstance, study_pk: int) -> tuple[int, bool]:
    """Returns the series' key and whether this call created it."""
    ds = p.dataset
    values = {
        "series_uid": p.series_uid,
        "study_pk": study_pk,
        "modality": _text(ds, "Modality", 16),
        "series_number": _int(ds, "SeriesNumber"),
        "description": _text(ds, "SeriesDescription"),
        "body_part": _text(ds, "BodyPartExamined"),
        "performed_start_date": _text(ds, "PerformedProcedureStepStartDate", 8),
        "performed_start_time": _text(ds, "PerformedProcedureStepStartTime", 16),
        "attrs": p.level_attrs["SERIES"],
    }
    inserted = session.execute(
        insert_for(session, Series).values(**values).on_conflict_do_nothing().returning(Series.id)
    ).scalar()
    if inserted is not None:
        return inserted, True
    return session.scalars(select(Series.id).where(Series.series_uid == p.series_uid)).one(), False


def count_instance(
    session: Session, study_pk: int, series_pk: int, size: int, now: datetime, new_series: bool
) -> None:
    """Move the study and series counters for one more instance."""
    session.execute(
        update(Series)
        .where(Series.id == series_pk)
        .values(num_instances=Series.num_instances + 1, size_bytes=Series.size_bytes + size)
    )
    values: dict[str, Any] = {
        "num_instances": Study.num_instances + 1,
        "size_bytes": Study.size_bytes + size,
        "last_received_at": now,
        "state": "receiving",
    }
    if new_series:
        values["num_series"] = Study.num_series + 1
    session.execute(update(Study).where(Study.id == study_pk).values(**values))
    if new_series:
        refresh_study_summary(session, study_pk)


def refresh_study_summary(session: Session, study_pk: int) -> None:
    """Recompute ModalitiesInStudy and body parts from the study's series."""
    rows = session.execute(
        select(Series.modality, Series.body_part).where(Series.study_pk == study_pk)
    ).all()
    modalities = sorted({m for m, _ in rows if m})
    parts = sorted({b for _, b in rows if b})
    session.execute(
        update(Study)
        .where(Study.id == study_pk)
        .values(modalities="\\".join(modalities)[:128], body_parts="\\".join(parts)[:256])
    )


def recount(session: Session, study_pk: int) -> None:
    """Recompute a study's counters from its instances (after deletes or repairs)."""
    from readingroom.archive.models import Instance

    for series_pk, n, size in session.execute(
        select(Instance.series_pk, func.count(), func.coalesce(func.sum(Instance.size_bytes), 0))
        .where(Instance.study_pk == study_pk)
        .group_by(Instance.series_pk)
    ).all():
        session.execute(update(Series).where(Series.id == series_pk).values(num_instances=n, size_bytes=size))
    n_series, n_inst, size = session.execute(
        select(func.count(), func.coalesce(func.sum(Series.num_instances), 0),
               func.coalesce(func.sum(Series.size_bytes), 0))
        .where(Series.study_pk == study_pk)
    ).one()
    session.execute(
        update(Study).where(Study.id == study_pk).values(num_series=n_series, num_instances=n_inst, size_bytes=size)
    )
    refresh_study_summary(session, study_pk)
