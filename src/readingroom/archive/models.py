"""Archive tables: the patient / study / series / instance index and DICOM peers.

Each level keeps (a) typed columns for what queries match and sort on, and
(b) the level's attributes as a DICOM JSON fragment, so a QIDO-RS answer or a
C-FIND response is assembled without opening a file. Each instance also keeps
its full metadata as DICOM JSON (bulk data replaced by URIs), which is what
WADO-RS metadata returns: a series' metadata is the join of its rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from readingroom.db import Base, UTCDateTime

UID = String(64)


class Patient(Base):
    """A patient as identified by one issuer (assigning authority)."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="", index=True)
    #: Indexed for cross-issuer demographic matching (interop.identity).
    birth_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    sex: Mapped[str] = mapped_column(String(16), default="")
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Set when an ADT^A40 merged this record into another (interop.identity); its studies moved there.
    merged_into_pk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    """One imaging study (Study Instance UID)."""

    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_state_last", "state", "last_received_at"),
        Index("ix_studies_date_time", "study_date", "study_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    institution_name: Mapped[str] = mapped_column(String(64), default="")
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True, index=True)
    modalities: Mapped[str] = mapped_column(String(128), default="")
    body_parts: Mapped[str] = mapped_column(String(256), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16), default="receiving")
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    complete_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: '' for a study acquired for reading; ``prior:<destination>`` for one fetched from a remote PACS as a
    #: prior (interop/priors.py). Not a DICOM attribute (``attrs`` is what QIDO returns), so it lives here.
    origin: Mapped[str] = mapped_column(String(64), default="", server_default="")

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """One series of a study."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    performed_start_date: Mapped[str] = mapped_column(String(8), default="")
    performed_start_time: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance and where its original bytes live."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_series_number", "series_pk", "instance_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"))
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    blob_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    pixel_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pixel_length: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(128), default="")
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metadata_json: Mapped[str] = mapped_column(Text)

    series: Mapped[Series] = relationship(back_populates="instances")


class IngestConflict(Base):
    """A second instance with a known SOP Instance UID but different bytes."""

    __tablename__ = "ingest_conflicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(UID, index=True)
    study_uid: Mapped[str] = mapped_column(UID, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(128), default="")
    existing_sha256: Mapped[str] = mapped_column(String(64))
    received_sha256: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))


class DicomPeer(Base):
    """A remote DICOM application entity (modality, PACS, workstation)."""

    __tablename__ = "dicom_peers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    allow_store: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_query: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_retrieve: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Reach this peer over DICOM TLS (C-MOVE sub-operations, send, echo); see archive/dimse_tls.py.
    tls: Mapped[bool] = mapped_column(Boolean, default=False)


class DomainEvent(Base):
    """A domain event other parts consume (e.g. ``study.complete`` -> a case).

    Written in the transaction that caused it, so a consumer that polls this
    table never misses one and a crash never produces one for a change that
    did not commit.
    """

    __tablename__ = "domain_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(128), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
