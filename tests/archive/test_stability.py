"""Study completeness after a quiet period, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import DomainEvent, Study
from readingroom.archive.stability import STUDY_COMPLETE, complete_stable_studies
from readingroom.clock import FrozenClock, set_clock
from tests.support.dicom import new_study


def test_study_completes_once_after_quiet_period(rt, tmp_path: Path) -> None:
    clock = FrozenClock(datetime(2026, 1, 1, 12, tzinfo=UTC))
    previous = set_clock(clock)
    try:
        paths = new_study("CT_small.dcm", tmp_path, 3)
        ingest_path(rt, paths[0], actor="t")
        clock.advance(30)
        ingest_path(rt, paths[1], actor="t")
        clock.advance(40)  # 70 s after the first, 40 s after the last
        assert complete_stable_studies(rt, stable_age=60) == []
        clock.advance(30)
        done = complete_stable_studies(rt, stable_age=60)
        assert len(done) == 1
        assert complete_stable_studies(rt, stable_age=60) == []
        with rt.db.read_session() as s:
            study = s.scalars(select(Study)).one()
            assert study.state == "complete"
            events = s.scalars(select(DomainEvent).where(DomainEvent.kind == STUDY_COMPLETE)).all()
            assert len(events) == 1 and events[0].payload["num_instances"] == 2
        # A late instance reopens the study; it completes again later.
        ingest_path(rt, paths[2], actor="t")
        with rt.db.read_session() as s:
            assert s.scalars(select(Study.state)).one() == "receiving"
        clock.advance(61)
        assert len(complete_stable_studies(rt, stable_age=60)) == 1
    finally:
        set_clock(previous)
