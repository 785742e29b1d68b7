"""Group commit: instances ingested at the same moment share one transaction, and lose nothing by it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from readingroom.archive import ingest, ingest_batch
from readingroom.archive.check import check
from readingroom.archive.ingest import IngestResult, ingest_path
from readingroom.archive.models import Instance, Series, Study
from readingroom.governance.models import AuditRecord
from tests.support.dicom import new_study, sample, variant


def _ingest_together(rt: Any, paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> tuple[list[IngestResult],
                                                                                              list[int]]:
    """Ingest ``paths`` from one thread each, all queued before any batch runs.

    Holding the group's commit lock while the threads queue makes the
    batching deterministic: the first thread to get the lock afterwards
    leads one batch holding every instance. Returns the results (in path
    order) and the sizes of the batches the fast path indexed.
    """
    batches: list[int] = []
    real = ingest_batch.index_batch

    def spy(db: Any, items: list[Any], before_commit: Any) -> list[Any]:
        rest = real(db, items, before_commit)
        batches.append(len(items) - len(rest))
        return rest

    monkeypatch.setattr(ingest, "index_batch", spy)
    group = ingest_batch.group_for(rt.db, ingest._run_batch)
    results: list[IngestResult | None] = [None] * len(paths)

    def work(i: int) -> None:
        results[i] = ingest_path(rt, paths[i], actor="t")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    with group._commit_lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(group._queue) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(group._queue) == len(paths)
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None], batches


def test_concurrent_instances_are_indexed_in_one_transaction(rt, tmp_path: Path, monkeypatch) -> None:
    study = new_study("CT_small.dcm", tmp_path / "a", 6)
    other = new_study("MR_small.dcm", tmp_path / "b", 3)
    results, batches = _ingest_together(rt, study + other, monkeypatch)
    assert [r.status for r in results] == ["stored"] * 9
    assert batches == [9]
    with rt.db.read_session() as s:
        studies = s.execute(select(Study.num_instances, Study.num_series, Study.size_bytes, Study.modalities)
                            .order_by(Study.id)).all()
        assert sorted(studies) == sorted([
            (6, 1, sum(p.stat().st_size for p in study), "CT"),
            (3, 1, sum(p.stat().st_size for p in other), "MR"),
        ])
        assert sorted(s.scalars(select(Series.num_instances))) == [3, 6]
        assert s.scalar(select(func.count()).select_from(AuditRecord)
                        .where(AuditRecord.action == "instance.store")) == 9
        numbers = sorted(s.scalars(select(Instance.instance_number).where(Instance.study_pk == Study.id,
                                                                          Study.modalities == "CT")))
        assert numbers == [1, 2, 3, 4, 5, 6]
    assert check(rt).clean


def test_duplicates_and_conflicts_in_a_batch_get_their_own_answers(rt, tmp_path: Path, monkeypatch) -> None:
    stored_before = variant("CT_small.dcm", tmp_path / "x.dcm", SOPInstanceUID="1.2.3.4.5.6.1")
    assert ingest_path(rt, stored_before, actor="t").status == "stored"
    same_again = stored_before
    conflicting = variant("CT_small.dcm", tmp_path / "y.dcm", SOPInstanceUID="1.2.3.4.5.6.1", PatientName="Other")
    new = variant("CT_small.dcm", tmp_path / "z.dcm", SOPInstanceUID="1.2.3.4.5.6.2")
    twice = variant("MR_small.dcm", tmp_path / "w.dcm", SOPInstanceUID="1.2.3.4.5.6.3")
    results, batches = _ingest_together(rt, [same_again, conflicting, new, twice, twice], monkeypatch)
    statuses = [r.status for r in results]
    assert statuses[:3] == ["duplicate", "conflict", "stored"]
    assert sorted(statuses[3:]) == ["duplicate", "stored"]
    assert batches == [2]  # the new instance and the first copy of the repeated one
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 3
        assert s.scalar(select(func.sum(Study.num_instances))) == 3
    assert check(rt).clean


def test_a_failing_batch_falls_back_and_leaves_nothing(rt, tmp_path: Path, monkeypatch) -> None:
    def boom() -> None:
        raise RuntimeError("injected failure")

    monkeypatch.setitem(ingest.FAULT_POINTS, "before_index_commit", boom)
    results, batches = _ingest_together(rt, new_study("CT_small.dcm", tmp_path, 4), monkeypatch)
    assert [r.status for r in results] == ["failed"] * 4
    assert batches == []
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
    assert list(rt.blobs.iter_keys()) == []
    assert check(rt).clean


def test_a_lone_instance_is_not_kept_waiting(rt, monkeypatch) -> None:
    """No timer: a single sender's instance is indexed by its own thread straight away."""
    batches: list[int] = []
    real = ingest_batch.index_batch

    def spy(db: Any, items: list[Any], before_commit: Any) -> list[Any]:
        batches.append(len(items))
        return real(db, items, before_commit)

    monkeypatch.setattr(ingest, "index_batch", spy)
    assert ingest_path(rt, sample("CT_small.dcm"), actor="t").status == "stored"
    assert batches == [1]


def test_a_batch_that_blows_up_releases_every_waiter() -> None:
    """If the batch function itself raises, every thread of that batch gets the error instead of waiting."""

    def pending() -> ingest_batch.Pending:
        return ingest_batch.Pending(None, None, "", "", "", "", None)  # type: ignore[arg-type]

    def run(batch: list[ingest_batch.Pending]) -> None:
        raise RuntimeError("bug")

    group = ingest_batch.GroupCommit(run)
    items = [pending() for _ in range(3)]
    errors: list[BaseException] = []

    def work(item: ingest_batch.Pending) -> None:
        try:
            group.submit(item)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(item,)) for item in items]
    with group._commit_lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(group._queue) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 3
