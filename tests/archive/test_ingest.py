"""Ingest: durability, duplicates, rejection of bad input, crash safety."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from readingroom.archive import ingest
from readingroom.archive.check import check
from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import IngestConflict, Instance, Series, Study
from readingroom.governance.models import AuditRecord
from tests.support.dicom import new_study, sample, variant


def _counts(rt) -> tuple[int, int, int]:
    with rt.db.read_session() as s:
        return (
            s.scalar(select(func.count()).select_from(Study)),
            s.scalar(select(func.count()).select_from(Series)),
            s.scalar(select(func.count()).select_from(Instance)),
        )


def test_stored_bytes_are_the_original_bytes(rt, tmp_path: Path) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm"):
        src = sample(name)
        result = ingest_path(rt, src, actor="test")
        assert result.status == "stored", result.reason
        with rt.db.read_session() as s:
            inst = s.scalars(select(Instance).where(Instance.sop_uid == result.sop_uid)).one()
        with rt.blobs.open(inst.blob_key) as fh:
            assert fh.read() == src.read_bytes()
        assert inst.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert check(rt).clean


def test_pixel_extent_is_recorded(rt) -> None:
    src = sample("CT_small.dcm")
    result = ingest_path(rt, src, actor="test")
    with rt.db.read_session() as s:
        inst = s.scalars(select(Instance).where(Instance.sop_uid == result.sop_uid)).one()
    data = src.read_bytes()
    assert inst.pixel_length == 128 * 128 * 2
    assert inst.pixel_offset is not None
    import pydicom

    assert data[inst.pixel_offset: inst.pixel_offset + inst.pixel_length] == pydicom.dcmread(src).PixelData


def test_counts_and_levels(rt, tmp_path: Path) -> None:
    paths = new_study("CT_small.dcm", tmp_path, 5)
    for p in paths:
        assert ingest_path(rt, p, actor="t").status == "stored"
    with rt.db.read_session() as s:
        study = s.scalars(select(Study)).one()
        assert (study.num_series, study.num_instances) == (1, 5)
        assert study.modalities == "CT"
        assert study.size_bytes == sum(p.stat().st_size for p in paths)
        assert study.state == "receiving"


def test_identical_duplicate_is_idempotent(rt) -> None:
    src = sample("CT_small.dcm")
    assert ingest_path(rt, src, actor="t").status == "stored"
    again = ingest_path(rt, src, actor="t")
    assert again.status == "duplicate" and again.ok
    assert _counts(rt) == (1, 1, 1)
    assert check(rt).clean


def test_different_bytes_same_uid_keeps_first_and_records(rt, tmp_path: Path) -> None:
    first = sample("CT_small.dcm")
    second = variant("CT_small.dcm", tmp_path / "b.dcm", PatientName="Someone^Else")
    assert ingest_path(rt, first, actor="t").status == "stored"
    result = ingest_path(rt, second, actor="t")
    assert result.status == "conflict" and result.warning and not result.ok
    with rt.db.read_session() as s:
        inst = s.scalars(select(Instance)).one()
        assert inst.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
        assert s.scalar(select(func.count()).select_from(IngestConflict)) == 1
    assert check(rt).clean  # the rejected copy left no orphan blob


def test_overwrite_policy_replaces(rt, tmp_path: Path) -> None:
    rt.settings.duplicate_policy = "overwrite"
    first = sample("CT_small.dcm")
    second = variant("CT_small.dcm", tmp_path / "b.dcm", PatientName="Someone^Else")
    ingest_path(rt, first, actor="t")
    assert ingest_path(rt, second, actor="t").status == "replaced"
    with rt.db.read_session() as s:
        inst = s.scalars(select(Instance)).one()
        assert inst.sha256 == hashlib.sha256(second.read_bytes()).hexdigest()
    assert _counts(rt) == (1, 1, 1)
    assert check(rt).clean


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: (d / "t.txt").write_text("not dicom") and d / "t.txt", "not a DICOM"),
        (lambda d: (d / "e.dcm").write_bytes(b"") or d / "e.dcm", "empty"),
        (lambda d: (d / "tr.dcm").write_bytes(sample("CT_small.dcm").read_bytes()[:20000]) and d / "tr.dcm",
         "truncated"),
        (lambda d: variant("CT_small.dcm", d / "nouid.dcm", SOPInstanceUID=None), "missing SOPInstanceUID"),
        (lambda d: variant("CT_small.dcm", d / "nostudy.dcm", StudyInstanceUID=None), "missing StudyInstanceUID"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(rt, tmp_path: Path, make, reason: str) -> None:
    assert ingest_path(rt, sample("MR_small.dcm"), actor="t").status == "stored"
    before = _counts(rt)
    bad = make(tmp_path)
    result = ingest_path(rt, bad, actor="t")
    assert result.status == "rejected"
    assert reason in result.reason
    assert _counts(rt) == before
    assert check(rt).clean
    assert list(rt.blobs.staging_dir.iterdir()) == []
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.outcome == "failure")) == 1


def test_failure_before_index_commit_leaves_nothing(rt, monkeypatch) -> None:
    def boom() -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setitem(ingest.FAULT_POINTS, "before_index_commit", boom)
    result = ingest_path(rt, sample("CT_small.dcm"), actor="t")
    assert result.status == "failed"
    assert _counts(rt) == (0, 0, 0)
    assert list(rt.blobs.iter_keys()) == []
    assert check(rt).clean


def test_crash_between_blob_and_index_is_repaired(rt, monkeypatch) -> None:
    """A process death after the blob rename leaves an orphan that check --repair indexes."""

    class Crash(BaseException):
        pass

    def die() -> None:
        raise Crash

    monkeypatch.setitem(ingest.FAULT_POINTS, "after_blob_commit", die)
    with pytest.raises(Crash):
        ingest_path(rt, sample("CT_small.dcm"), actor="t")
    monkeypatch.delitem(ingest.FAULT_POINTS, "after_blob_commit")
    assert _counts(rt) == (0, 0, 0)  # nothing visible
    report = check(rt)
    assert not report.clean and len(report.orphan_blobs) == 1
    repaired = check(rt, repair=True)
    assert repaired.reindexed == report.orphan_blobs
    assert _counts(rt) == (1, 1, 1)
    assert check(rt).clean


def test_check_detects_missing_and_corrupt_blobs(rt, tmp_path: Path) -> None:
    for p in new_study("MR_small.dcm", tmp_path, 3):
        ingest_path(rt, p, actor="t")
    with rt.db.read_session() as s:
        keys = list(s.scalars(select(Instance.blob_key).order_by(Instance.id)))
    rt.blobs.delete(keys[0])
    path = rt.blobs.local_path(keys[1])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    report = check(rt)
    assert len(report.missing_blobs) == 1 and len(report.hash_mismatch) == 1
    assert not report.clean
