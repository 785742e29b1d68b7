"""Locate stored instances for retrieval (WADO-RS, C-MOVE, C-GET, send).

Returns plain records detached from any session, carrying everything needed
to stream the original bytes or one frame without parsing the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from readingroom.archive.models import Instance, Patient, Series, Study


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance's bytes are and what they are."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    pixel_offset: int | None
    pixel_length: int | None
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    patient_id: str


def _query(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_uids: list[str] | None = None,
    series_uids: list[str] | None = None,
    sop_uids: list[str] | None = None,
) -> Select[Any]:
    q = (
        select(
            Study.study_uid, Series.series_uid, Instance.sop_uid, Instance.sop_class_uid,
            Instance.transfer_syntax_uid, Instance.blob_key, Instance.size_bytes, Instance.sha256,
            Instance.pixel_offset, Instance.pixel_length, Instance.number_of_frames, Instance.rows,
            Instance.columns, Instance.bits_allocated, Patient.patient_id,
        )
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Instance.study_pk)
        .join(Patient, Patient.id == Study.patient_pk)
    )
    if study_uid:
        q = q.where(Study.study_uid == study_uid)
    if series_uid:
        q = q.where(Series.series_uid == series_uid)
    if sop_uid:
        q = q.where(Instance.sop_uid == sop_uid)
    if study_uids:
        q = q.where(Study.study_uid.in_(study_uids))
    if series_uids:
        q = q.where(Series.series_uid.in_(series_uids))
    if sop_uids:
        q = q.where(Instance.sop_uid.in_(sop_uids))
    return q.order_by(Study.study_uid, Series.series_number, Series.id, Instance.instance_number, Instance.id)


def find_instances(
    session: Session,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    *,
    study_uids: list[str] | None = None,
    series_uids: list[str] | None = None,
    sop_uids: list[str] | None = None,
) -> list[InstanceRef]:
    """Instances matching the given UIDs, in study/series/instance-number order."""
    rows = session.execute(
        _query(study_uid, series_uid, sop_uid, study_uids, series_uids, sop_uids)
    ).all()
    return [InstanceRef(*row) for row in rows]


def iter_metadata_json(
    session: Session, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> Iterator[str]:
    """The cached DICOM JSON of each matching instance, as stored (with the base placeholder)."""
    q = (
        select(Instance.metadata_json)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Instance.study_pk)
        .where(Study.study_uid == study_uid)
    )
    if series_uid:
        q = q.where(Series.series_uid == series_uid)
    if sop_uid:
        q = q.where(Instance.sop_uid == sop_uid)
    q = q.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    yield from session.scalars(q.execution_options(yield_per=500))
