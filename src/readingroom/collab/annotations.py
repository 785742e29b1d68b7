"""Image annotations and measurements: create, edit (optimistic concurrency, history), delete, list.

Annotations are shared: whoever may see the study's case or read the study
sees them, and whoever also holds ``annotations.write`` adds and edits them
(the route checks the action, these functions the relationship). A caller
who may not read the study is told it does not exist, so UIDs cannot be
probed.

Measurements are always recomputed here from the stored frame
(``annotations_measure``); a client sends geometry, never numbers. Each
change appends a row to ``annotation_versions``, a case event (principle 1)
and an audit record in the same transaction, then publishes a live event
after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.pixels import pixel_array
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.archive.models import Study
from readingroom.archive.retrieve import InstanceRef, find_instances
from readingroom.clock import utcnow
from readingroom.collab import annotations_measure as am
from readingroom.collab import live
from readingroom.collab.annotations_models import Annotation, AnnotationVersion
from readingroom.governance import audit, policy
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor, log_event
from readingroom.workflow.models import Case

MAX_LABEL = 1024


class AnnotationNotFound(LookupError):
    """No such annotation, instance or study, or none the caller may see."""


class InvalidAnnotation(ValueError):
    """The annotation cannot be stored as given; ``reasons`` lists every problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class StaleVersion(Exception):
    """The client edited an older version than the current one."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the annotation changed since version you edited; it is now at version {current}")
        self.current = current


@dataclass(frozen=True)
class Located:
    """An instance a caller may read, with the case of its study (if any)."""

    ref: InstanceRef
    case: Case | None


# -- access ----------------------------------------------------------------------------------------------------


def _case_of(session: Session, study_uid: str) -> Case | None:
    return session.scalar(select(Case).join(Study, Study.id == Case.study_pk).where(Study.study_uid == study_uid))


def may_read(session: Session, principal: Principal, study_uid: str, case: Case | None) -> bool:
    """Whether ``principal`` sees a study's annotations: reads the study, or sees its case."""
    if policy.can_read_study(session, principal, study_uid):
        return True
    return case is not None and policy.can_see_case(session, principal, case)


def locate(session: Session, principal: Principal, study_uid: str, series_uid: str, sop_uid: str) -> Located:
    """The instance, if it exists in that study and series and the caller may read it (else not found)."""
    refs = find_instances(session, study_uid, series_uid, sop_uid)
    case = _case_of(session, study_uid)
    if not refs or not may_read(session, principal, study_uid, case):
        raise AnnotationNotFound(f"no instance {sop_uid} in series {series_uid} of study {study_uid}")
    return Located(refs[0], case)


def _load(session: Session, principal: Principal, annotation_id: int) -> tuple[Annotation, Located]:
    row = session.get(Annotation, annotation_id)
    if row is None:
        raise AnnotationNotFound(f"no annotation {annotation_id}")
    try:
        return row, locate(session, principal, row.study_uid, row.series_uid, row.sop_uid)
    except AnnotationNotFound:
        raise AnnotationNotFound(f"no annotation {annotation_id}") from None


# -- measuring on the stored frame -----------------------------------------------------------------------------


def measure_on(rt: Runtime, ref: InstanceRef, frame: int, kind: str, points: list[list[float]],
               label: str) -> dict[str, Any]:
    """Validate the geometry against the instance and measure it on the real frame (InvalidAnnotation)."""
    frames = max(1, ref.number_of_frames or 1)
    reasons = []
    if kind not in am.KINDS:
        raise InvalidAnnotation([f"unknown kind {kind!r}; one of {', '.join(sorted(am.KINDS))}"])
    if not ref.rows or not ref.columns:
        raise InvalidAnnotation([f"instance {ref.sop_uid} has no image to annotate"])
    if not 1 <= frame <= frames:
        reasons.append(f"frame {frame} does not exist (the instance has {frames})")
    if len(label) > MAX_LABEL:
        reasons.append(f"the label is longer than {MAX_LABEL} characters")
    reasons += am.check_geometry(kind, points, ref.rows, ref.columns, label)
    if reasons:
        raise InvalidAnnotation(reasons)
    with rt.blobs.open(ref.blob_key) as fh:
        ds = dcmread(fh, stop_before_pixels=True)
    cal = am.calibration(ds, frame)
    values = None
    if kind in am.NEEDS_PIXELS and cal.grayscale:
        try:
            with rt.blobs.open(ref.blob_key) as fh:
                arr = pixel_array(fh, index=frame - 1)
        except (AttributeError, KeyError, ValueError, NotImplementedError, RuntimeError) as exc:
            raise InvalidAnnotation([f"cannot decode the pixel data of {ref.sop_uid}: {exc}"]) from exc
        values = am.modality_values(np.squeeze(arr), ds, frame)
    return am.measure(kind, points, cal, values)


# -- changes -------------------------------------------------------------------------------------------------


def _snapshot(session: Session, row: Annotation, action: str, by: str, at: datetime) -> None:
    session.add(AnnotationVersion(annotation_id=row.id, version=row.version, action=action, kind=row.kind,
                                  points=row.points, label=row.label, measurements=row.measurements, by=by, at=at))


def _record(session: Session, principal: Principal, row: Annotation, located: Located, action: str) -> None:
    """The case event (with its audit record), or the audit record alone when the study has no case."""
    detail = {"annotation_id": row.id, "kind": row.kind, "sop_uid": row.sop_uid, "frame": row.frame,
              "version": row.version}
    case = located.case
    if case is not None:
        log_event(session, case.id, f"annotation_{action}", Actor(principal.username, principal.user_id),
                  case.state, case.state, detail)
    else:
        audit.record(session, actor=principal.username, action=f"annotation.{action}", resource_type="annotation",
                     resource_id=str(row.id), patient_id=located.ref.patient_id, detail=detail)


def _publish(rt: Runtime, kind: str, row: Annotation) -> None:
    live.publish(rt, kind, {"annotation_id": row.id, "study_uid": row.study_uid, "sop_uid": row.sop_uid,
                            "frame": row.frame, "kind": row.kind, "version": row.version,
                            "by": row.updated_by}, case_id=row.case_id)


def create(rt: Runtime, principal: Principal, *, study_uid: str, series_uid: str, sop_uid: str, frame: int,
           kind: str, points: list[list[float]], label: str = "") -> Annotation:
    """Store a new annotation on one frame, measured on the server (before the write transaction opens)."""
    with rt.db.read_session() as s:
        located = locate(s, principal, study_uid, series_uid, sop_uid)
    measurements = measure_on(rt, located.ref, frame, kind, points, label)
    with rt.db.session() as s:
        now = utcnow()
        case = s.get(Case, located.case.id) if located.case else None
        row = Annotation(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, frame=frame,
                         case_id=case.id if case else None, kind=kind, points=points, label=label,
                         measurements=measurements, author_id=principal.user_id, author=principal.username,
                         updated_by=principal.username, created_at=now, updated_at=now, version=1)
        s.add(row)
        s.flush()
        _snapshot(s, row, "created", principal.username, now)
        _record(s, principal, row, Located(located.ref, case), "added")
        s.commit()
        s.refresh(row)
        s.expunge(row)
    _publish(rt, "annotation.added", row)
    return row


def update_annotation(rt: Runtime, principal: Principal, annotation_id: int, *, expected_version: int,
                      points: list[list[float]] | None = None, label: str | None = None,
                      delete: bool = False) -> Annotation:
    """Edit (new points and/or label) or delete an annotation, if ``expected_version`` is still current.

    The write is one conditional UPDATE on the version, so of two people
    editing the same version exactly one wins; the other gets StaleVersion
    and can reload and re-apply.
    """
    with rt.db.read_session() as s:
        row, located = _load(s, principal, annotation_id)
    if row.deleted_at is not None:
        raise AnnotationNotFound(f"annotation {annotation_id} was deleted")
    if row.version != expected_version:
        raise StaleVersion(row.version)
    new_points = row.points if points is None else points
    new_label = row.label if label is None else label
    measurements = row.measurements if delete else measure_on(rt, located.ref, row.frame, row.kind,
                                                              new_points, new_label)
    with rt.db.session() as s:
        now = utcnow()
        values: dict[str, Any] = {"points": new_points, "label": new_label, "measurements": measurements,
                                  "updated_by": principal.username, "updated_at": now,
                                  "version": Annotation.version + 1}
        if delete:
            values["deleted_at"] = now
        done = s.execute(update(Annotation).where(Annotation.id == annotation_id,
                                                  Annotation.version == expected_version,
                                                  Annotation.deleted_at.is_(None))
                         .values(**values).execution_options(synchronize_session=False))
        if done.rowcount != 1:  # type: ignore[attr-defined]
            current = s.scalar(select(Annotation.version).where(Annotation.id == annotation_id))
            raise StaleVersion(current or expected_version)
        row = s.get_one(Annotation, annotation_id, populate_existing=True)
        case = s.get(Case, row.case_id) if row.case_id else None
        _snapshot(s, row, "deleted" if delete else "edited", principal.username, now)
        _record(s, principal, row, Located(located.ref, case), "deleted" if delete else "changed")
        s.commit()
        s.refresh(row)
        s.expunge(row)
    _publish(rt, "annotation.deleted" if delete else "annotation.changed", row)
    return row


# -- reads ---------------------------------------------------------------------------------------------------


def get(rt: Runtime, principal: Principal, annotation_id: int) -> Annotation:
    with rt.db.read_session() as s:
        row, _ = _load(s, principal, annotation_id)
        s.expunge(row)
        return row


def history(rt: Runtime, principal: Principal, annotation_id: int) -> list[AnnotationVersion]:
    """Every version of an annotation, oldest first."""
    with rt.db.read_session() as s:
        _load(s, principal, annotation_id)
        rows = list(s.scalars(select(AnnotationVersion).where(AnnotationVersion.annotation_id == annotation_id)
                              .order_by(AnnotationVersion.version)))
        s.expunge_all()
        return rows


def for_study(rt: Runtime, principal: Principal, study_uid: str, *, sop_uid: str | None = None,
              frame: int | None = None, include_deleted: bool = False,
              ids: list[int] | None = None) -> list[Annotation]:
    """The study's annotations the caller may see (AnnotationNotFound if they may not read the study)."""
    with rt.db.read_session() as s:
        exists = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
        if exists is None or not may_read(s, principal, study_uid, _case_of(s, study_uid)):
            raise AnnotationNotFound(f"no study {study_uid}")
        q = select(Annotation).where(Annotation.study_uid == study_uid)
        if sop_uid:
            q = q.where(Annotation.sop_uid == sop_uid)
        if frame is not None:
            q = q.where(Annotation.frame == frame)
        if ids:
            q = q.where(Annotation.id.in_(ids))
        if not include_deleted:
            q = q.where(Annotation.deleted_at.is_(None))
        rows = list(s.scalars(q.order_by(Annotation.sop_uid, Annotation.frame, Annotation.id)))
        s.expunge_all()
    return rows
