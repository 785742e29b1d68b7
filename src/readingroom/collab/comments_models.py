"""Tables of case comments: the thread and every revision of every comment.

A comment is never overwritten or removed: an edit appends a revision (the
current text is also kept on the comment for cheap thread reads) and a
deletion blanks the text but keeps the row as a tombstone, so replies keep
their parent and the history stays auditable.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class CaseComment(Base):
    """One comment on a case (a reply when ``parent_id`` is set)."""

    __tablename__ = "case_comments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(BigId, ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("case_comments.id"), nullable=True,
                                                  index=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    author_name: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text, default="")
    #: Usernames that were notified of this comment (mentions of people who may see the case).
    mentions: Mapped[list[str]] = mapped_column(JSON, default=list)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_by: Mapped[str] = mapped_column(String(64), default="")


class CaseCommentRevision(Base):
    """The text of one comment as it was at one revision (revision 1 is the original)."""

    __tablename__ = "case_comment_revisions"
    __table_args__ = (UniqueConstraint("comment_id", "revision", name="uq_case_comment_revisions_rev"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    comment_id: Mapped[int] = mapped_column(BigId, ForeignKey("case_comments.id", ondelete="CASCADE"),
                                            index=True)
    revision: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    author_name: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
