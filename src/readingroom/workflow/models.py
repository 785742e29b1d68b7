"""Worklist tables: readers, cases, the case event log, routing rules, exceptions.

``case_events`` is the truth of a case (principle 1): every state change
appends one row in the same transaction that updates ``cases``; analytics,
the UI timeline and the simulator all read it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class ReaderProfile(Base):
    """What makes a user a reader: subspecialties, shifts, capacity, residency."""

    __tablename__ = "reader_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    home_site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    subspecialties: Mapped[list[str]] = mapped_column(JSON, default=list)
    qualifications: Mapped[list[str]] = mapped_column(JSON, default=list)
    shifts: Mapped[list[str]] = mapped_column(JSON, default=list)
    capacity_rvu_per_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    on_call: Mapped[bool] = mapped_column(Boolean, default=False)
    residency_tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ReaderLicence(Base):
    """A licence to report on patients of one jurisdiction."""

    __tablename__ = "reader_licences"
    __table_args__ = (UniqueConstraint("reader_id", "jurisdiction", name="uq_reader_licences_reader_jur"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("reader_profiles.id", ondelete="CASCADE"), index=True)
    jurisdiction: Mapped[str] = mapped_column(String(32))
    expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)


class ReaderCredential(Base):
    """Privileges (credentialing) to read for one site."""

    __tablename__ = "reader_credentials"
    __table_args__ = (UniqueConstraint("reader_id", "site_id", name="uq_reader_credentials_reader_site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("reader_profiles.id", ondelete="CASCADE"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)


class Case(Base):
    """One read to be done: a study (or an order waiting for its images)."""

    __tablename__ = "cases"
    __table_args__ = (
        Index("ix_cases_state_rank_deadline", "state", "priority_rank", "deadline"),
        Index("ix_cases_claimed_by_state", "claimed_by", "state"),
        Index("ix_cases_assignee_state", "assignee", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_pk: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), unique=True, nullable=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True, index=True)
    patient_pk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True, index=True)
    modality: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(128), default="")
    patient_class: Mapped[str] = mapped_column(String(16), default="")
    patient_age_years: Mapped[float | None] = mapped_column(Float, nullable=True)
    ordering_physician: Mapped[str] = mapped_column(String(128), default="")
    order_fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    priority_rank: Mapped[int] = mapped_column(Integer, default=4)
    priority_source: Mapped[str] = mapped_column(String(64), default="")
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    rvu: Mapped[float] = mapped_column(Float, default=1.0)
    state: Mapped[str] = mapped_column(String(16), default="new")
    mode: Mapped[str] = mapped_column(String(8), default="pull")
    rule_id: Mapped[str] = mapped_column(String(64), default="")
    rules_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    required_subspecialty: Mapped[str] = mapped_column(String(64), default="")
    second_reader_required: Mapped[bool] = mapped_column(Boolean, default=False)
    assignee: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    escalation_step: Mapped[int] = mapped_column(Integer, default=0)
    escalation_plan: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_escalation_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    routing_digest: Mapped[str] = mapped_column(String(64), default="")
    routed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pool_widened: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: 'read' (a study's primary read) or a child read asked about a parent case: 'consult',
    #: 'second_opinion', 'second_read', 'peer_review' (collab.children). Children carry no study or
    #: patient of their own: access to the parent's images comes only from the AccessGrant the
    #: collaboration module manages, so it ends when the child is answered.
    kind: Mapped[str] = mapped_column(String(16), default="read", server_default="read")
    parent_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=True,
                                                       index=True)
    #: What the requester of a child read asked of routing, on top of the rules: ``subspecialties``,
    #: ``readers`` (a named expert), ``exclude`` (e.g. the original reader), ``sla_minutes``.
    routing_request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    #: The canonical procedure (interop.procedures) the site's description or code maps to; '' = unmapped.
    procedure_code: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)


class CaseEvent(Base):
    """One entry of a case's event log (append-only)."""

    __tablename__ = "case_events"
    __table_args__ = (
        Index("ix_case_events_case_id_id", "case_id", "id"),
        # turnaround analytics: each case's first timestamp per event kind from the index alone
        Index("ix_case_events_case_kind_at", "case_id", "kind", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(128), default="system")
    from_state: Mapped[str] = mapped_column(String(16), default="")
    to_state: Mapped[str] = mapped_column(String(16), default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CaseCandidate(Base):
    """A reader the last routing decision made eligible for a case (the pull worklist)."""

    __tablename__ = "case_candidates"
    __table_args__ = (Index("ix_case_candidates_user_case", "user_id", "case_id", unique=True),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class CasePrior(Base):
    """An earlier study of the same patient, linked for comparison."""

    __tablename__ = "case_priors"
    __table_args__ = (UniqueConstraint("case_id", "study_pk", name="uq_case_priors_case_study"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))


class RoutingRulesVersion(Base):
    """One version of the routing rules document; exactly one is active."""

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    document: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class ExceptionItem(Base):
    """Something a person must look at: no eligible reader, unreadable study, stuck case, failed delivery."""

    __tablename__ = "exception_items"
    __table_args__ = (Index("ix_exception_items_state_kind", "state", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), nullable=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(128), default="")
    resolution: Mapped[str] = mapped_column(Text, default="")


class ConsumerOffset(Base):
    """How far a background consumer has read the domain event table."""

    __tablename__ = "consumer_offsets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
