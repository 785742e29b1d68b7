"""A simulated run written as a ReadingRoom database: the same event log, read by the same analytics.

The run's studies become cases and its moments become case events with the
kinds the server writes (``routed``, ``claimed``, ``report.preliminary``,
``report.final``), in a fresh SQLite database migrated to the production
schema. ``readingroom.analytics`` then computes turnaround from it exactly
as it does for a live network, so a simulated figure and a measured one are
the same computation, and the simulator's own summary can be checked
against it (tests/simulator/test_eventlog.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from readingroom.db import Database
from readingroom.governance.models import Site, User
from readingroom.simulator.network import PRIORITY
from readingroom.simulator.records import RunRecords
from readingroom.simulator.workload import Workload
from readingroom.workflow.models import Case, CaseEvent

_BATCH = 5000


def write_event_log(run: RunRecords, workload: Workload, sim_start: datetime, path: Path) -> Path:
    """Write ``run`` to a new SQLite database at ``path`` (replaced if it exists)."""
    path.unlink(missing_ok=True)
    db = Database(f"sqlite:///{path}")
    try:
        db.upgrade()
        with db.session() as s:
            site_ids = _sites(s, workload, sim_start)
            user_ids = _users(s, workload, site_ids, sim_start)
            _cases(s, run, sim_start, site_ids, user_ids)
    finally:
        db.dispose()
    return path


def _sites(s: Any, workload: Workload, when: datetime) -> dict[str, int]:
    for code, site in workload.sites.items():
        s.add(Site(code=code, name=site.name or code, timezone=site.tz, jurisdiction=site.state, created_at=when))
    s.flush()
    return {row.code: row.id for row in s.query(Site).all()}


def _users(s: Any, workload: Workload, site_ids: dict[str, int], when: datetime) -> dict[str, int]:
    for reader in workload.readers:
        s.add(User(username=reader.id, role="radiologist", site_id=site_ids.get(reader.home), created_at=when))
    s.flush()
    return {row.username: row.id for row in s.query(User).all()}


def _cases(s: Any, run: RunRecords, sim_start: datetime, site_ids: dict[str, int], user_ids: dict[str, int]) -> None:
    c = run.cases
    at = lambda minutes: sim_start + timedelta(minutes=float(minutes))  # noqa: E731
    cases: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(len(run)):
        case_id = i + 1
        ready = at(c["ready"][i])
        priority = PRIORITY[str(c["priority"][i])]
        reader = str(c["reader"][i])
        started = ready + timedelta(minutes=float(c["wait"][i]))
        read_end = started + timedelta(minutes=float(c["transfer"][i] + c["read"][i]))
        final = read_end + timedelta(minutes=float(c["consult"][i]))
        done = bool(c["done"][i])
        cases.append({"id": case_id, "site_id": site_ids[str(c["site"][i])], "modality": str(c["modality"][i]),
                      "description": str(c["exam"][i]), "patient_class": str(c["patient_class"][i]),
                      "priority": priority.value, "priority_rank": priority.rank, "rvu": 1.0,
                      "state": "final" if done else ("claimed" if reader else "available"),
                      "required_subspecialty": str(c["subspecialty"][i]),
                      "claimed_by": user_ids.get(reader), "claimed_at": started if reader else None,
                      "ready_at": ready, "deadline": ready + timedelta(minutes=float(c["sla"][i])),
                      "created_at": ready, "updated_at": final if done else ready})
        events.append(_event(case_id, ready, "routed", "system"))
        if reader:
            events.append(_event(case_id, started, "claimed", reader))
        if done:
            if priority.rank <= 2:
                events.append(_event(case_id, read_end, "report.preliminary", reader))
            events.append(_event(case_id, final, "report.final", reader))
    for start in range(0, len(cases), _BATCH):
        s.execute(insert(Case), cases[start:start + _BATCH])
    for start in range(0, len(events), _BATCH):
        s.execute(insert(CaseEvent), events[start:start + _BATCH])


def _event(case_id: int, moment: datetime, kind: str, actor: str) -> dict[str, Any]:
    return {"case_id": case_id, "at": moment, "kind": kind, "actor": actor, "from_state": "", "to_state": "",
            "data": {}}
