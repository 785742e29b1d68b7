"""Helpers of the audit-trail tests: the real CLI on a Runtime's data dir, raw SQL, sample records."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from typing import Any

from sqlalchemy import select, text

from readingroom.governance import audit
from readingroom.governance.models import AuditRecord, AuditSeal


def cli_env(rt: Any, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("READINGROOM_")}
    env["READINGROOM_DATA_DIR"] = str(rt.settings.data_dir)
    if rt.settings.database_url:
        env["READINGROOM_DATABASE_URL"] = rt.settings.database_url
    for key, value in settings.items():
        env[f"READINGROOM_{key.upper()}"] = str(value)
    return env


def run_cli(rt: Any, *args: str, **settings: Any) -> subprocess.CompletedProcess[str]:
    """``readingroom ARGS`` as a subprocess on the runtime's data dir and database."""
    return subprocess.run([sys.executable, "-m", "readingroom", *args], env=cli_env(rt, **settings),
                          capture_output=True, text=True, timeout=300)


def write_records(rt: Any, n: int, *, actor: str = "rad.chen", patient_id: str = "P-1") -> list[int]:
    """``n`` records the way the application writes them (in a transaction and through the read queue)."""
    with rt.db.session() as s:
        for i in range(n // 2):
            audit.record(s, actor=actor, source="10.1.2.3", action="study.retrieve", resource_type="study",
                         resource_id=f"1.2.826.0.1.{i}", patient_id=patient_id,
                         detail={"series": 2, "frames": [1, 2], "viewer": {"name": "ohif", "zoom": 1.5}})
    for i in range(n - n // 2):
        audit.record_soon(rt.db, actor=actor, source="10.1.2.3", action="query", resource_type="study",
                          resource_id="", detail={"level": "STUDY", "filters": {"PatientID": f"P-{i}"}, "count": i})
    audit.flush(rt.db)
    with rt.db.read_session() as s:
        return list(s.scalars(select(AuditRecord.id).order_by(AuditRecord.id)))


def sql(rt: Any, statement: str, **params: Any) -> Any:
    """Run raw SQL the way someone with database access (and no application) would."""
    with rt.db.engine.begin() as conn:
        return conn.execute(text(statement), params)


def db_time(value: datetime) -> str:
    """A timestamp literal both SQLite (our text format) and PostgreSQL accept for a UTC column."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def seals(rt: Any) -> list[tuple[int, int]]:
    with rt.db.read_session() as s:
        return [(r.seq, r.record_id) for r in s.execute(select(AuditSeal.seq, AuditSeal.record_id)
                                                        .order_by(AuditSeal.seq))]
