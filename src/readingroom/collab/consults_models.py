"""Consults, second opinions and second reads: the question asked about a case and its answer.

The work itself is a child case (``cases.kind`` = the consult's kind, ``parent_case_id`` = the case
asked about), so routing, the worklist, claims and SLA escalation are the worklist's own. This table
keeps what the case model has no place for: the question, who asked, the answer, the report it was
given for, and the access grant that lets the consultant see the parent case while it is needed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class Consult(Base):
    """One request for an opinion on a case (consult, second opinion or second read) and its answer."""

    __tablename__ = "consults"
    __table_args__ = (Index("ix_consults_parent_case", "parent_case_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    parent_case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    child_case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    #: Set for requests the system makes once per parent (``second_read:<case id>``): the unique index
    #: turns a second attempt (another process, a replayed event) into a no-op.
    dedupe_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    question: Mapped[str] = mapped_column(Text, default="")
    subspecialty: Mapped[str] = mapped_column(String(64), default="")
    expert_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: 'open', 'answered' or 'cancelled'.
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    answer: Mapped[str] = mapped_column(Text, default="")
    #: Second reads: whether the second reader agrees with the final report (None: not said / not asked).
    agrees: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    answered_by: Mapped[str] = mapped_column(String(128), default="")
    answered_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The parent's report at the time of the answer, when the reports module had one.
    report_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    #: The consultant's current access grant to the parent case (access_grants.id).
    grant_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
