"""Tables of conferences (tumour boards, MDT meetings): the session, its ordered cases, its attendees.

The decision per case and the attendance live on these rows so a board's
minutes can be listed in one query; each decision and presentation is also
a case event (the case's timeline stays the truth, principle 1).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class Conference(Base):
    """One scheduled session of a board at a site."""

    __tablename__ = "conferences"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="tumour_board")
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    scheduled_start: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    scheduled_end: Mapped[datetime] = mapped_column(UTCDateTime)
    chair_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConferenceCase(Base):
    """A case on a session's list, in presentation order, with the question and the board's decision."""

    __tablename__ = "conference_cases"
    __table_args__ = (UniqueConstraint("conference_id", "case_id", name="uq_conference_cases_conf_case"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conference_id: Mapped[int] = mapped_column(ForeignKey("conferences.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[int] = mapped_column(BigId, ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    presented_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decision_outcome: Mapped[str] = mapped_column(String(32), default="")
    decision_text: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ConferenceAttendee(Base):
    """A person invited to a session (any site or organisation), and when they checked in."""

    __tablename__ = "conference_attendees"
    __table_args__ = (UniqueConstraint("conference_id", "user_id", name="uq_conference_attendees_conf_user"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conference_id: Mapped[int] = mapped_column(ForeignKey("conferences.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    external: Mapped[bool] = mapped_column(default=False)
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    checked_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
