"""Tables of critical results: the finding, every notification sent about it, and delegations.

A critical result is a closed loop (ACR practice parameter on communication):
the record must show who was told, by which channel, when, and who
acknowledged when. ``critical_results`` holds the finding and where its
escalation ladder stands (``escalation_step`` is claimed with a conditional
UPDATE, so each step happens once even with several processes);
``critical_notifications`` is append-mostly, one row per recipient and
channel; ``critical_delegations`` says who acts for a clinician.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class CriticalResult(Base):
    """One critical finding on a case and the state of its acknowledgement loop."""

    __tablename__ = "critical_results"
    __table_args__ = (Index("ix_critical_results_state_next", "state", "next_escalation_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(BigId, ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    category: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(8))
    finding: Mapped[str] = mapped_column(Text)
    flagged_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    flagged_by_name: Mapped[str] = mapped_column(String(64))
    #: The ordering clinician as the order / study names them (DICOM PN), and their account if one matches.
    clinician_name: Mapped[str] = mapped_column(String(128), default="")
    clinician_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    #: "open" until acknowledged, then "acknowledged".
    state: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ack_deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Ladder position: 0 clinician, 1 delegate, 2 supervisors and contacts (the last step).
    escalation_step: Mapped[int] = mapped_column(Integer, default=0)
    next_escalation_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acknowledged_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    acknowledged_by_name: Mapped[str] = mapped_column(String(64), default="")
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ack_note: Mapped[str] = mapped_column(Text, default="")


class CriticalNotification(Base):
    """One attempt to tell one recipient through one channel, and what came of it."""

    __tablename__ = "critical_notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    result_id: Mapped[int] = mapped_column(BigId, ForeignKey("critical_results.id", ondelete="CASCADE"),
                                           index=True)
    step: Mapped[int] = mapped_column(Integer)
    #: Why this recipient: clinician, delegate, supervisor, contact.
    role: Mapped[str] = mapped_column(String(16))
    #: live (the user's event stream), webhook, log; "none" when a step had nobody to tell.
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(128))
    recipient_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: pending (written with the step), then streamed / not_connected / sent / failed / logged / no_recipient.
    outcome: Mapped[str] = mapped_column(String(16), default="pending")
    detail: Mapped[str] = mapped_column(Text, default="")


class CriticalDelegation(Base):
    """A clinician's delegate for critical results, optionally only within a time window."""

    __tablename__ = "critical_delegations"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    delegate_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
