"""The audit trail: one row per access to patient data and per change.

Rows are written in the same transaction as the action they describe, so an
action that rolled back leaves no claim that it happened, and one that
committed cannot lack its record. (The governance issue adds the hash chain,
ATNA export and search on top of this table.)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import AuditRecord


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
) -> AuditRecord:
    """Append one audit record to the current transaction."""
    row = AuditRecord(
        at=utcnow(),
        actor=actor[:128],
        source=source[:128],
        action=action,
        resource_type=resource_type,
        resource_id=resource_id[:128],
        patient_id=patient_id[:64],
        outcome=outcome,
        detail=detail or {},
        reason=reason,
    )
    session.add(row)
    return row


def record_now(db: Any, **fields: Any) -> None:
    """Write one audit record in its own transaction (reads, rejections)."""
    with db.session() as session:
        record(session, **fields)
