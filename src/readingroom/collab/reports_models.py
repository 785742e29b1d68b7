"""Report tables: one report per case and every version it ever had.

``reports`` holds the working copy and a ``version`` counter: every write is
one conditional ``UPDATE … WHERE version = :expected`` (the ETag the client
sent), so two editors can never both succeed on the same version, on SQLite
or PostgreSQL. ``report_versions`` is append-only: each accepted write
(autosave, signature, addendum) adds one row, which is what history, diff,
the ETag of a past version and the outputs read. Nothing is ever updated in
``report_versions`` and a final row is never followed by a change to its
sections, which is what makes a final immutable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class Report(Base):
    """The current state of a case's report (its latest version)."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    template_id: Mapped[str] = mapped_column(String(64), default="")
    #: draft | preliminary | final | addended
    status: Mapped[str] = mapped_column(String(16), default="draft")
    #: The concurrency counter: number of the latest row in report_versions.
    version: Mapped[int] = mapped_column(Integer, default=1)
    sections: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(128), default="")
    final_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ReportVersion(Base):
    """One accepted write of a report (append-only)."""

    __tablename__ = "report_versions"
    __table_args__ = (
        UniqueConstraint("report_id", "number", name="uq_report_versions_report_number"),
        Index("ix_report_versions_report_kind", "report_id", "kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    #: draft | preliminary | final | addendum
    kind: Mapped[str] = mapped_column(String(16))
    template_id: Mapped[str] = mapped_column(String(64), default="")
    sections: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    addendum: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(128), default="")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Set on signed versions (preliminary, final, addendum): who signed, as whom (display name).
    signed_by: Mapped[str] = mapped_column(String(128), default="")
    signer_name: Mapped[str] = mapped_column(String(128), default="")
