"""Peer review: a sampled final read scored by a second reader, RADPEER style.

``reviewer_user_id`` is stored for the peer-review administrators and never leaves the API
towards the reviewed reader (see collab.peer_review.reviews_of).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class PeerReview(Base):
    """One review of one final read; at most one per reviewed case (the unique index makes sampling idempotent)."""

    __tablename__ = "peer_reviews"
    __table_args__ = (Index("ix_peer_reviews_reviewed_state", "reviewed_user_id", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    child_case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True, index=True)
    reviewed_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    reviewer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    #: The ``report.final`` case event that triggered the sample.
    final_event_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    #: 'open', 'scored' or 'cancelled'.
    state: Mapped[str] = mapped_column(String(16), default="open")
    #: RADPEER: '1', '2a', '2b', '3a', '3b'.
    score: Mapped[str] = mapped_column(String(4), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    grant_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
