"""Builders for the retention tests: sites, aged studies, cases in a chosen state, snapshots of the store."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import Instance, Patient, Series, Study
from readingroom.archive.stability import complete_stable_studies
from readingroom.governance.sites import create_site
from readingroom.runtime import Runtime
from readingroom.workflow import jobs
from readingroom.workflow.cases import transition
from readingroom.workflow.models import Case
from tests.support.dicom import new_study

HUB = "Riverside University Medical Center"
LAKE = "Lakeshore Regional Hospital"


def make_sites(rt: Runtime) -> dict[str, int]:
    """Two sites; studies land on them by InstitutionName."""
    with rt.db.session() as s:
        hub = create_site(s, "HUB", HUB)
        lake = create_site(s, "LKS", LAKE)
        ids = {"HUB": hub.id, "LKS": lake.id}
    rt.invalidate()
    return ids


def days_ago(days: int) -> str:
    """A DICOM date ``days`` before today (UTC)."""
    return (datetime.now(UTC).date() - timedelta(days=days)).strftime("%Y%m%d")


def add_study(rt: Runtime, tmp: Path, *, src: str = "CT_small.dcm", n: int = 2, site: str = HUB,
              study_date: str | None = "20100101", patient: str = "P-1") -> str:
    """Ingest a study of ``n`` instances; returns its Study Instance UID (left in state 'receiving')."""
    uid = generate_uid()
    paths = new_study(src, tmp / uuid.uuid4().hex, n, study_uid=uid, InstitutionName=site, StudyDate=study_date,
                      PatientID=patient)
    for path in paths:
        assert ingest_path(rt, path, actor="test").ok
    return uid


def complete_all(rt: Runtime) -> list[int]:
    """Mark every quiet study complete and let the worklist's intake make their cases."""
    complete_stable_studies(rt, stable_age=0)
    return jobs.intake(rt)


def case_of(rt: Runtime, study_uid: str) -> int:
    with rt.db.read_session() as s:
        case_id = s.scalar(select(Case.id).join(Study, Study.id == Case.study_pk).where(Study.study_uid == study_uid))
    assert case_id is not None, f"no case for {study_uid}"
    return case_id


def close_case(rt: Runtime, study_uid: str, how: str = "cancelled") -> int:
    """Bring the study's case to a terminal state: 'cancelled', or 'final' through a claim and a report."""
    case_id = case_of(rt, study_uid)
    with rt.db.session() as s:
        if how == "final":
            transition(s, case_id, "reassigned")
            transition(s, case_id, "completed")
        else:
            transition(s, case_id, "cancelled")
    return case_id


def snapshot(rt: Runtime) -> dict[str, object]:
    """What a purge could change: row counts and the set of blob files."""
    with rt.db.read_session() as s:
        counts = {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                  for model in (Patient, Study, Series, Instance, Case)}
    return {**counts, "blobs": sorted(rt.blobs.iter_keys())}


def blob_keys(rt: Runtime, study_uid: str) -> list[str]:
    with rt.db.read_session() as s:
        return list(s.scalars(select(Instance.blob_key).join(Study, Study.id == Instance.study_pk)
                              .where(Study.study_uid == study_uid)))


def study_exists(rt: Runtime, study_uid: str) -> bool:
    with rt.db.read_session() as s:
        return s.scalar(select(Study.id).where(Study.study_uid == study_uid)) is not None


def blob_path(rt: Runtime, key: str) -> Path:
    path = rt.blobs.local_path(key)
    assert path is not None
    return path


def today() -> date:
    return datetime.now(UTC).date()
