"""Searching and exporting the audit trail (the service behind ``GET /api/v1/audit`` and ``audit export``).

Search pages newest first by record id with an opaque cursor (the last id
seen), which stays correct while new records arrive, unlike an offset.
Every row says whether and where it is sealed, so an auditor sees at once
whether a record is already protected by the chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, select

from readingroom.governance import atna
from readingroom.governance.audit_chain import COLUMNS, GENESIS_SEQ
from readingroom.governance.models import AuditRecord, AuditSeal
from readingroom.runtime import Runtime

MAX_LIMIT = 500


class AuditQueryError(ValueError):
    """A search or export parameter is unusable; the message says which and why."""


@dataclass(frozen=True)
class AuditFilter:
    """Search criteria; empty values do not filter. ``action`` ending in ``*`` matches a prefix (``study.*``)."""

    actor: str = ""
    action: str = ""
    outcome: str = ""
    patient_id: str = ""
    resource_type: str = ""
    resource_id: str = ""
    flagged: bool | None = None
    since: datetime | None = None
    until: datetime | None = None

    def validate(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise AuditQueryError(f"{name} must carry a time zone (e.g. 2025-01-31T08:00:00Z)")
        if self.since and self.until and self.since > self.until:
            raise AuditQueryError("since is after until")

    def applied(self) -> dict[str, Any]:
        """The criteria actually given (for the audit record of the search itself)."""
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()
                if v not in ("", None)}


def apply_filter(q: Select[Any], f: AuditFilter) -> Select[Any]:
    """``q`` narrowed to the records ``f`` describes (AuditQueryError for unusable criteria)."""
    f.validate()
    if f.actor:
        q = q.where(AuditRecord.actor == f.actor)
    if f.action.endswith("*"):
        q = q.where(AuditRecord.action.startswith(f.action[:-1], autoescape=True))
    elif f.action:
        q = q.where(AuditRecord.action == f.action)
    for column, value in ((AuditRecord.outcome, f.outcome), (AuditRecord.patient_id, f.patient_id),
                          (AuditRecord.resource_type, f.resource_type), (AuditRecord.resource_id, f.resource_id)):
        if value:
            q = q.where(column == value)
    if f.flagged is not None:
        q = q.where(AuditRecord.flagged == f.flagged)
    if f.since:
        q = q.where(AuditRecord.at >= f.since)
    if f.until:
        q = q.where(AuditRecord.at < f.until)
    return q


def _with_seals(*extra: Any) -> Select[Any]:
    return select(*COLUMNS, AuditSeal.seq, AuditSeal.mac, AuditSeal.sealed_at, *extra).outerjoin(
        AuditSeal, and_(AuditSeal.record_id == AuditRecord.id, AuditSeal.seq > GENESIS_SEQ))


def as_dict(row: Any) -> dict[str, Any]:
    """One record (and its seal, if any) as plain JSON-ready values."""
    return {
        "id": row.id, "at": row.at.isoformat() if row.at else None, "actor": row.actor, "source": row.source,
        "action": row.action, "resource_type": row.resource_type, "resource_id": row.resource_id,
        "patient_id": row.patient_id, "outcome": row.outcome, "detail": row.detail, "reason": row.reason,
        "flagged": bool(row.flagged),
        "seal": None if row.seq is None else {"seq": row.seq, "mac": row.mac,
                                              "sealed_at": row.sealed_at.isoformat() if row.sealed_at else None},
    }


def search(rt: Runtime, f: AuditFilter, *, cursor: int | None = None,
           limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
    """One page of matching records, newest first, and the cursor of the next page (None: last page)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise AuditQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    q = apply_filter(_with_seals(), f)
    if cursor is not None:
        q = q.where(AuditRecord.id < cursor)
    with rt.db.read_session() as s:
        rows = s.execute(q.order_by(AuditRecord.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [as_dict(r) for r in rows], (rows[-1].id if more and rows else None)


def iter_export(rt: Runtime, f: AuditFilter, *, chunk: int = 2000) -> Iterator[Any]:
    """Every matching record (with its seal) oldest first, read in chunks so memory stays flat."""
    last = 0
    base = apply_filter(_with_seals(), f)
    while True:
        with rt.db.read_session() as s:
            rows = s.execute(base.where(AuditRecord.id > last).order_by(AuditRecord.id).limit(chunk)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def jsonl_line(row: Any) -> bytes:
    return json.dumps(as_dict(row), ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"


def atna_line(row: Any, source: atna.AuditSource) -> bytes:
    return atna.to_bytes(atna.audit_message(row, source)) + b"\n"
