"""Tables of referrals: what a partner organisation asked a receiving site for, and its own timeline.

A referral exists before any case does (it may be declined and never
become one), so its received / accepted / declined / SLA times are kept in
``referral_events``; once accepted, the case's event log carries the rest.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class Referral(Base):
    """One referral from a partner's user to a receiving site."""

    __tablename__ = "referrals"
    __table_args__ = (Index("ix_referrals_state_sla", "state", "sla_due_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    accession_number: Mapped[str] = mapped_column(String(64), unique=True)
    submitted_by: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    receiving_site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(128))
    birth_date: Mapped[date] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1))
    clinical_question: Mapped[str] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(String(16))
    requested_procedure: Mapped[str] = mapped_column(String(128))
    modality: Mapped[str] = mapped_column(String(16))
    body_part: Mapped[str] = mapped_column(String(64), default="")
    images: Mapped[str] = mapped_column(String(16))  # to_follow | scan_requested
    referring_physician: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="received")
    sla_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sla_breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exception_item_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decline_reason: Mapped[str] = mapped_column(Text, default="")
    case_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("cases.id"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReferralEvent(Base):
    """One step of a referral (received, accepted, declined, sla_breached), append-only."""

    __tablename__ = "referral_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("referrals.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
