"""Tables of image annotations and measurements, and every earlier version of each.

An annotation belongs to one frame of one stored instance (SOP Instance UID,
1-based frame number) and, when the study has one, to its case. The current
state lives in ``annotations``; every state it ever had, including the
first and the deletion, is a row of ``annotation_versions``, so a
measurement that was later moved can still be shown as it was when a report
quoted it. ``version`` is the optimistic-concurrency counter clients send
back when they edit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class Annotation(Base):
    """The current state of one annotation (soft-deleted rows keep ``deleted_at``)."""

    __tablename__ = "annotations"
    __table_args__ = (
        Index("ix_annotations_sop_frame", "sop_uid", "frame"),
        Index("ix_annotations_study", "study_uid"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_uid: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int] = mapped_column(Integer, default=1)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"), nullable=True,
                                                index=True)
    kind: Mapped[str] = mapped_column(String(16))
    #: Points as [[column, row], ...] in image pixel space (PS3.3 C.10.5.1.2: (0, 0) is the top left corner).
    points: Mapped[list[list[float]]] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(Text, default="")
    #: What the server measured (length, angle, area, statistics, units, notes).
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    author: Mapped[str] = mapped_column(String(128))
    updated_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)


class AnnotationVersion(Base):
    """One state an annotation had: written with every create, edit and delete (append-only)."""

    __tablename__ = "annotation_versions"
    __table_args__ = (UniqueConstraint("annotation_id", "version", name="uq_annotation_versions"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    #: 'created', 'edited' or 'deleted'.
    action: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    points: Mapped[list[list[float]]] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(Text, default="")
    measurements: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
