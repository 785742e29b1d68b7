"""SLA escalation: each step once, even with two scheduler processes on one database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import timedelta

from sqlalchemy import insert, select

from readingroom.clock import utcnow
from readingroom.workflow import jobs
from readingroom.workflow.models import Case, CaseEvent, ExceptionItem
from readingroom.workflow.notify import LogNotifier

STEPS = ["warn", "raise_sort_key", "exception_queue"]


def _overdue_cases(rt, n: int) -> list[int]:
    now = utcnow()
    plan = [{"at": (now - timedelta(minutes=30 - 10 * i)).isoformat(), "at_percent": 50 * (i + 1),
             "action": a, "notify": ["lead"]} for i, a in enumerate(STEPS)]
    with rt.db.session() as s:
        return [s.execute(insert(Case).values(
            accession_number=f"E{i}", state="available", priority="urgent", priority_rank=3, created_at=now,
            updated_at=now, version=1, flags=[], order_fields={}, escalation_plan=plan,
            next_escalation_at=now - timedelta(minutes=30), deadline=now,
        ).returning(Case.id)).scalar_one() for i in range(n)]


def _escalations(rt) -> Counter[tuple[int, int]]:
    with rt.db.read_session() as s:
        rows = s.execute(select(CaseEvent.case_id, CaseEvent.data).where(CaseEvent.kind == "escalated")).all()
    return Counter((case_id, data["step"]) for case_id, data in rows)


def test_ladder_applies_in_order_once(rt) -> None:
    ids = _overdue_cases(rt, 3)
    notifier = LogNotifier()
    assert jobs.escalate_due(rt, notifier) == 3  # step 1 of each
    assert jobs.escalate_due(rt, notifier) == 3  # step 2
    assert jobs.escalate_due(rt, notifier) == 3  # step 3
    assert jobs.escalate_due(rt, notifier) == 0
    assert set(_escalations(rt).values()) == {1} and len(_escalations(rt)) == 9
    with rt.db.read_session() as s:
        assert {c.priority_rank for c in s.scalars(select(Case).where(Case.id.in_(ids)))} == {2}
        assert s.scalars(select(ExceptionItem.kind)).all() == ["stuck_case"] * 3
    assert {n.kind for n in notifier.sent} == {"escalation.warn", "escalation.raise_sort_key",
                                               "escalation.exception_queue"}


def test_future_steps_wait(rt) -> None:
    ids = _overdue_cases(rt, 1)
    with rt.db.session() as s:
        s.get(Case, ids[0]).next_escalation_at = utcnow() + timedelta(minutes=5)
    assert jobs.escalate_due(rt, LogNotifier()) == 0


def test_two_scheduler_processes_escalate_each_step_once(rt) -> None:
    n = 40
    _overdue_cases(rt, n)
    script = textwrap.dedent(f"""
        from readingroom.config import load_settings
        from readingroom.runtime import Runtime
        from readingroom.workflow import jobs
        from readingroom.workflow.notify import LogNotifier
        rt = Runtime.open(load_settings({str(rt.settings.data_dir)!r},
                                        database_url={rt.settings.effective_database_url!r}), migrate=False)
        total = 0
        for _ in range(12):
            total += jobs.escalate_due(rt, LogNotifier(), limit=25)
        print(total)
    """)
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    totals = [int(p.communicate(timeout=300)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    counts = _escalations(rt)
    assert len(counts) == n * len(STEPS)  # every step of every case happened
    assert set(counts.values()) == {1}  # and none twice
    assert sum(totals) == n * len(STEPS)
