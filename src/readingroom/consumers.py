"""Background consumers of append-only tables: each keeps its own offset, several processes may run it.

Intake, forwarding, prior fetching, duplicate and identity scans all read
"rows after the last one I handled" (domain events, case events, new
patients). The offset row is locked (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite has one writer at a time), so two processes never handle one batch
twice; each row is handled in a savepoint, so one bad row is logged and
skipped instead of stalling the consumer forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.archive.index import insert_for
from readingroom.runtime import Runtime
from readingroom.workflow.models import ConsumerOffset

log = logging.getLogger(__name__)


def lock_offset(session: Session, name: str) -> int:
    """The consumer's position (0 for a new one), locked until the transaction ends."""
    session.execute(insert_for(session, ConsumerOffset).values(name=name, position=0).on_conflict_do_nothing())
    q = select(ConsumerOffset.position).where(ConsumerOffset.name == name)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    return session.scalar(q) or 0


def anything_after(rt: Runtime, name: str, rows_after: Callable[[Session, int, int], Sequence[Any]]) -> bool:
    """Whether the consumer has work, asked on a read-only session.

    Every ``serve`` process polls each consumer every few seconds; asking
    first without the write lock (SQLite has one writer at a time) keeps an
    idle network idle instead of queueing empty write transactions.
    """
    with rt.db.read_session() as s:
        position = s.scalar(select(ConsumerOffset.position).where(ConsumerOffset.name == name)) or 0
        return bool(rows_after(s, position, 1))


def save_offset(session: Session, name: str, position: int) -> None:
    session.execute(update(ConsumerOffset).where(ConsumerOffset.name == name).values(position=position))


def consume(rt: Runtime, name: str, rows_after: Callable[[Session, int, int], Sequence[Any]],
            handle: Callable[[Session, Any], int], *, batch: int = 200) -> int:
    """Handle the rows after the consumer's offset; returns the sum of ``handle``'s counts.

    ``rows_after(session, position, batch)`` returns rows whose first item is
    the row's id, in id order; ``handle(session, row)`` runs in a savepoint.
    """
    if not anything_after(rt, name, rows_after):
        return 0
    total = 0
    with rt.db.session() as s:
        position = lock_offset(s, name)
        for row in rows_after(s, position, batch):
            position = row[0]
            try:
                with s.begin_nested():
                    total += handle(s, row)
            except Exception:
                log.exception("consumer %s could not handle row %s", name, row[0])
        save_offset(s, name, position)
    return total
