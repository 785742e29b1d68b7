"""The audit trail: one row per access to patient data and per change.

Rows are written in the same transaction as the action they describe, so an
action that rolled back leaves no claim that it happened, and one that
committed cannot lack its record. (The governance issue adds the hash chain,
ATNA export and search on top of this table.)

Reads change nothing, so their records (``record_soon``) are queued and
written by one background thread per database, many rows per transaction:
a query answered in 3 ms used to spend another 0.6 ms of CPU, and an SQLite
write transaction, on its own audit row while the next query waited. The
record's time is taken when it is queued; the queue is flushed on exit.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import AuditRecord

log = logging.getLogger(__name__)

#: How long the writer waits for more rows before committing what it has (seconds).
LINGER = 0.02


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    resource_type: str = "",
    resource_id: str = "",
    patient_id: str = "",
    outcome: str = "success",
    source: str = "",
    detail: dict[str, Any] | None = None,
    reason: str = "",
    flagged: bool = False,
) -> AuditRecord:
    """Append one audit record to the current transaction (``flagged``: it needs an auditor's look)."""
    row = AuditRecord(**_row(actor=actor, action=action, resource_type=resource_type, resource_id=resource_id,
                             patient_id=patient_id, outcome=outcome, source=source, detail=detail, reason=reason,
                             flagged=flagged))
    session.add(row)
    return row


def record_now(db: Any, **fields: Any) -> None:
    """Write one audit record in its own transaction (reads, rejections)."""
    with db.session() as session:
        record(session, **fields)


def _text(value: str, limit: int | None = None) -> str:
    """Text a column can hold: NUL (which PostgreSQL refuses, e.g. in a username an attacker typed) shows as U+FFFD,
    so the record of a hostile request is written instead of failing with it."""
    value = value.replace("\x00", "\ufffd")
    return value[:limit] if limit else value


def _row(**fields: Any) -> dict[str, Any]:
    return {
        "at": utcnow(), "actor": _text(fields["actor"], 128), "source": _text(fields.get("source", ""), 128),
        "action": _text(fields["action"]), "resource_type": _text(fields.get("resource_type", "")),
        "resource_id": _text(fields.get("resource_id", ""), 128),
        "patient_id": _text(fields.get("patient_id", ""), 64),
        "outcome": _text(fields.get("outcome", "success")), "detail": fields.get("detail") or {},
        "reason": _text(fields.get("reason", "")), "flagged": bool(fields.get("flagged", False)),
    }


class _QueuedWriter:
    """One thread that writes queued audit rows of one database in batches."""

    def __init__(self, db: Any) -> None:
        self._db = weakref.ref(db)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._run, name="audit-writer", daemon=True).start()

    def put(self, row: dict[str, Any]) -> None:
        self._queue.put(row)

    def flush(self) -> None:
        """Return once every row queued so far is written (or reported as lost)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=30)]
            except queue.Empty:
                if self._db() is None:  # the database is gone and nothing is queued: retire
                    return
                continue
            time.sleep(LINGER)
            try:
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            try:
                self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        db = self._db()
        if db is None:
            log.error("audit rows lost (database closed): %s", batch)
            return
        try:
            with db.engine.begin() as conn:
                conn.execute(insert(AuditRecord.__table__), batch)
        except Exception:
            log.exception("writing %d queued audit rows failed; retrying one by one", len(batch))
            for row in batch:
                try:
                    with db.engine.begin() as conn:
                        conn.execute(insert(AuditRecord.__table__), row)
                except Exception:
                    log.exception("audit row lost: %s", row)


_WRITERS: weakref.WeakKeyDictionary[Any, _QueuedWriter] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def record_soon(db: Any, **fields: Any) -> None:
    """Queue one audit record of a read; a background thread writes it within ``LINGER`` seconds."""
    with _WRITERS_LOCK:
        writer = _WRITERS.get(db)
        if writer is None:
            writer = _WRITERS[db] = _QueuedWriter(db)
    writer.put(_row(**fields))


def flush(db: Any | None = None) -> None:
    """Wait until queued audit records (of ``db``, or of every database) are written."""
    with _WRITERS_LOCK:
        writers = [_WRITERS[db]] if db is not None and db in _WRITERS else \
            ([] if db is not None else list(_WRITERS.values()))
    for writer in writers:
        writer.flush()


atexit.register(flush)
