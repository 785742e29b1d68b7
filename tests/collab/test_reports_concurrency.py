"""Concurrent report writers: the database decides (conditional UPDATE on the version), nobody loses text."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from readingroom.collab import reports
from readingroom.collab.reports_models import ReportVersion
from readingroom.governance.users import get_user
from readingroom.workflow.cases import Actor
from readingroom.workflow.models import Case
from tests.collab.report_fixtures import Desk, clock, make_desk  # noqa: F401  (fixture)
from tests.workflow.conftest import network  # noqa: F401  (fixture)

WRITERS = 6


@pytest.fixture()
def desk(network, tmp_path: Path, clock) -> Desk:  # noqa: F811
    desk = make_desk(network, tmp_path, clock)
    r = desk.put({"findings": "Base text.", "impression": "Base."}, desk.get().headers["ETag"])
    assert r.status_code == 200 and r.json()["version"] == 1
    return desk


def _save(desk: Desk, n: int, expected: int = 1) -> reports.Report:
    with desk.rt.db.session() as s:
        case = s.get(Case, desk.case)
        ann = Actor("ann", get_user(s, "ann").id)
        return reports.save_draft(s, case, ann, expected, {"findings": f"Writer {n}.", "impression": "Base."})


def test_threads_with_the_same_etag_one_wins_the_others_get_the_newer_text(desk: Desk) -> None:
    barrier = threading.Barrier(WRITERS)
    won: list[int] = []
    stale: list[reports.StaleReport] = []
    errors: list[BaseException] = []

    def write(n: int) -> None:
        barrier.wait()
        try:
            _save(desk, n)
            won.append(n)
        except reports.StaleReport as exc:
            stale.append(exc)
        except BaseException as exc:  # anything else fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(won) == 1 and len(stale) == WRITERS - 1
    winner = f"Writer {won[0]}."
    assert all(e.version == 2 and e.sections["findings"] == winner for e in stale)
    with desk.rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ReportVersion)) == 2
    assert desk.get().json()["sections"]["findings"] == winner


def _wait_until_blocked(desk: Desk) -> None:
    """On PostgreSQL, wait until another session waits for a row lock (the second writer's UPDATE)."""
    if desk.rt.db.is_sqlite:
        return  # the second writer waits for BEGIN IMMEDIATE: it cannot even read before the first commits
    deadline = time.monotonic() + 30
    with desk.rt.db.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND datname = current_database()")).scalar()
            if waiting:
                return
            time.sleep(0.02)  # polling for a state, not timing a behaviour
    pytest.fail("the second writer never waited for the first one's row lock")


def test_a_writer_that_read_before_the_other_committed_still_loses(desk: Desk) -> None:
    """The second writer passes every Python check, then its UPDATE finds the version moved: 412, not a lost write."""
    outcome: list[object] = []
    with desk.rt.db.session() as s:
        case = s.get(Case, desk.case)
        reports.save_draft(s, case, Actor("ann", get_user(s, "ann").id), 1, {"findings": "First.", "impression": "B."})

        def second() -> None:
            try:
                outcome.append(_save(desk, 2))
            except reports.StaleReport as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        _wait_until_blocked(desk)
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], reports.StaleReport)
    assert outcome[0].version == 2 and outcome[0].sections["findings"] == "First."
    assert desk.get().json()["version"] == 2
