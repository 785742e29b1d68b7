"""Queued audit records of reads: all written, in few transactions, with the time they were queued."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from readingroom.governance import audit
from readingroom.governance.models import AuditRecord


def test_queued_records_are_all_written_in_batches(rt: Any, monkeypatch: Any) -> None:
    transactions = []
    real_begin = rt.db.engine.begin

    def counting_begin() -> Any:
        transactions.append(1)
        return real_begin()

    monkeypatch.setattr(rt.db.engine, "begin", counting_begin)
    monkeypatch.setattr(audit, "LINGER", 0.2)
    for i in range(50):
        audit.record_soon(rt.db, actor="reader", action="query", resource_type="study", resource_id=f"1.2.{i}",
                          detail={"n": i})
    audit.flush(rt.db)
    with rt.db.read_session() as s:
        rows = s.execute(select(AuditRecord.resource_id, AuditRecord.detail, AuditRecord.at)
                         .where(AuditRecord.action == "query").order_by(AuditRecord.id)).all()
    assert [r.resource_id for r in rows] == [f"1.2.{i}" for i in range(50)]
    assert [r.detail["n"] for r in rows] == list(range(50))
    assert all(r.at.tzinfo is not None for r in rows)
    assert len(transactions) < 50


def test_a_row_that_cannot_be_written_does_not_take_the_others_down(rt: Any) -> None:
    audit.record_soon(rt.db, actor="reader", action="query", detail={"ok": 1})
    audit.record_soon(rt.db, actor="reader", action="query", detail={"bad": object()})  # not JSON
    audit.record_soon(rt.db, actor="reader", action="query", detail={"ok": 2})
    audit.flush(rt.db)
    with rt.db.read_session() as s:
        n = s.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "query"))
    assert n == 2
