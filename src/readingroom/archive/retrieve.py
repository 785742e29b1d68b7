"""Locate stored instances for retrieval (WADO-RS, C-MOVE, C-GET, send).

Returns plain records detached from any session, carrying everything needed
to stream the original bytes or one frame without parsing the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, select
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


_I, _SE, _ST, _P = Instance.__table__.c, Series.__table__.c, Study.__table__.c, Patient.__table__.c
_FILTERS = {
    "study_uid": (_ST.study_uid, False), "series_uid": (_SE.series_uid, False), "sop_uid": (_I.sop_uid, False),
    "study_uids": (_ST.study_uid, True), "series_uids": (_SE.series_uid, True), "sop_uids": (_I.sop_uid, True),
}
_STATEMENTS: dict[tuple[str, ...], Select[Any]] = {}


def _query(used: tuple[str, ...]) -> Select[Any]:
    """The lookup for one combination of filters, with bound parameters, built once.

    Plain table columns (no ORM entities) and a statement object reused per
    combination keep a frame or instance lookup to SQLAlchemy's cached
    compiled form: building and compiling the join each time cost as much
    as running it.
    """
    q = _STATEMENTS.get(used)
    if q is not None:
        return q
    q = (
        select(
            _ST.study_uid, _SE.series_uid, _I.sop_uid, _I.sop_class_uid, _I.transfer_syntax_uid, _I.blob_key,
            _I.size_bytes, _I.sha256, _I.pixel_offset, _I.pixel_length, _I.number_of_frames, _I.rows,
            _I.columns, _I.bits_allocated, _P.patient_id,
        )
        .select_from(Instance.__table__)
        .join(Series.__table__, _SE.id == _I.series_pk)
        .join(Study.__table__, _ST.id == _I.study_pk)
        .join(Patient.__table__, _P.id == _ST.patient_pk)
    )
    for name in used:
        column, many = _FILTERS[name]
        q = q.where(column.in_(bindparam(name, expanding=True)) if many else column == bindparam(name))
    q = q.order_by(_ST.study_uid, _SE.series_number, _SE.id, _I.instance_number, _I.id)
    _STATEMENTS[used] = q
    return q


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
    given = {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid, "study_uids": study_uids,
             "series_uids": series_uids, "sop_uids": sop_uids}
    params = {name: value for name, value in given.items() if value}
    rows = session.execute(_query(tuple(params)), params).all()
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
