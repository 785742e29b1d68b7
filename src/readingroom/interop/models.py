"""Interoperability tables: orders, HL7 message log, destinations and the durable outbox,
forwarding rules, canonical procedures, patient identity links, go-live validations.

One migration (0004) creates them all; each service module owns its tables'
rules (orders.py, outbox.py, forwarding.py, procedures.py, identity.py,
golive.py) and the edges (hl7.py, fhir.py, api.py) only call those services.
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
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class Order(Base):
    """An imaging order from a RIS/EHR (HL7 ORM/OMI or FHIR ServiceRequest), reconciled with its study.

    ``status`` follows the FHIR ServiceRequest codes the order can take here:
    ``active`` (ordered, images not yet linked), ``completed`` (study linked),
    ``revoked`` (cancelled) and ``entered-in-error``. ``case_id`` is the
    read the order created (state ``waiting`` until the images arrive).
    """

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_placer", "placer_order_number", "placer_authority"),
        Index("ix_orders_patient_status", "patient_pk", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    placer_order_number: Mapped[str] = mapped_column(String(64), default="")
    placer_authority: Mapped[str] = mapped_column(String(64), default="")
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True, index=True)
    patient_pk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), nullable=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_issuer: Mapped[str] = mapped_column(String(64), default="")
    procedure_code: Mapped[str] = mapped_column(String(64), default="")
    procedure_text: Mapped[str] = mapped_column(String(255), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[str] = mapped_column(String(16), default="routine")
    patient_class: Mapped[str] = mapped_column(String(16), default="")
    ordering_provider: Mapped[str] = mapped_column(String(255), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(24), default="active", index=True)
    case_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("cases.id", ondelete="SET NULL"), nullable=True,
                                                index=True)
    study_pk: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"), nullable=True,
                                                 index=True)
    #: 'hl7', 'fhir' or 'api', and the inbound message that last changed the order.
    source: Mapped[str] = mapped_column(String(16), default="")
    source_message_id: Mapped[str] = mapped_column(String(64), default="")
    requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Hl7Message(Base):
    """Every HL7 v2 message received, with the acknowledgement it got (idempotency and audit)."""

    __tablename__ = "hl7_messages"
    __table_args__ = (Index("ix_hl7_messages_sender_control", "sending_application", "sending_facility",
                            "control_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    control_id: Mapped[str] = mapped_column(String(64), default="")
    message_type: Mapped[str] = mapped_column(String(32), default="")
    sending_application: Mapped[str] = mapped_column(String(128), default="")
    sending_facility: Mapped[str] = mapped_column(String(128), default="")
    peer_address: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    raw: Mapped[str] = mapped_column(Text, default="")


class Destination(Base):
    """Somewhere ReadingRoom sends to: an HL7 MLLP receiver, a DICOM peer, a DICOMweb endpoint.

    The health columns are the live state admins see (last contact, last
    error, down since); a destination that is down keeps its work queued in
    the outbox (downtime mode) and receives it in order when it returns.
    """

    __tablename__ = "interop_destinations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: 'hl7' (host, port), 'dicom' (peer_id), 'dicomweb' (url).
    kind: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255), default="")
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    url: Mapped[str] = mapped_column(String(1024), default="")
    peer_id: Mapped[int | None] = mapped_column(ForeignKey("dicom_peers.id", ondelete="CASCADE"), nullable=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: HL7: report kinds sent (preliminary, final, addendum); empty = all.
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: a DICOM destination queried for priors of new cases (C-FIND + C-MOVE).
    prior_source: Mapped[bool] = mapped_column(Boolean, default=False)
    #: kind-specific options (HL7 receiving application/facility, DICOMweb auth, timeouts).
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    down_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OutboxItem(Base):
    """One unit of outbound work, written in the transaction that caused it (principle 1's twin).

    Delivered at least once, in ``id`` order per destination: a failing head
    item holds back the later ones (a final never overtakes its
    preliminary). ``control_id`` is stable across retries (HL7 MSH-10) so a
    receiver drops duplicates; ``dedupe_key`` keeps one cause from queueing
    twice. A worker leases the head with a conditional UPDATE on
    ``leased_until``, so several processes never deliver one item at once.
    """

    __tablename__ = "outbox_items"
    __table_args__ = (
        UniqueConstraint("destination_id", "dedupe_key", name="uq_outbox_items_destination_dedupe"),
        Index("ix_outbox_items_destination_state_id", "destination_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    destination_id: Mapped[int] = mapped_column(ForeignKey("interop_destinations.id", ondelete="CASCADE"))
    #: 'hl7' (payload is the message), 'c-store' / 'stow-rs' (a study), 'prior-fetch' (a case's priors).
    operation: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(128))
    control_id: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[str] = mapped_column(Text, default="")
    case_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("cases.id", ondelete="SET NULL"), nullable=True,
                                                index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    #: pending -> delivered | failed (gave up after max attempts; an exception item is raised) | cancelled
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    leased_by: Mapped[str] = mapped_column(String(64), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ForwardingRule(Base):
    """Forward matching studies to a destination (DICOM C-STORE or DICOMweb STOW-RS) when complete."""

    __tablename__ = "forwarding_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: modality, site (code), description (regex), priority, procedure (canonical code); all optional.
    match: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    destination_id: Mapped[int] = mapped_column(ForeignKey("interop_destinations.id", ondelete="CASCADE"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class Procedure(Base):
    """A canonical procedure every site's local names map to (routing and analytics use its code)."""

    __tablename__ = "procedures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    radlex_code: Mapped[str] = mapped_column(String(32), default="")  # RadLex Playbook RPID
    loinc_code: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ProcedureMapping(Base):
    """One site's study description or procedure code -> a canonical procedure.

    ``scope`` is the site's code, or ``*`` for every site (a site's own
    mapping wins). ``value`` is stored normalised (upper case, single spaces).
    """

    __tablename__ = "procedure_mappings"
    __table_args__ = (UniqueConstraint("scope", "source", "value", name="uq_procedure_mappings_scope_source_value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(32), default="*")
    #: 'description' (Study Description / OBR-4 text) or 'code' (procedure code).
    source: Mapped[str] = mapped_column(String(16), default="description")
    value: Mapped[str] = mapped_column(String(255))
    procedure_id: Mapped[int] = mapped_column(ForeignKey("procedures.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class PatientLink(Base):
    """Two patient records (different issuers) the matching rules say are, or may be, one person.

    Reported for a person to confirm or reject; never merged silently.
    """

    __tablename__ = "patient_links"
    __table_args__ = (UniqueConstraint("patient_pk", "other_pk", name="uq_patient_links_pair"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    other_pk: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    #: 'match' (a rule says same person), 'possible', 'confirmed', 'rejected'
    state: Mapped[str] = mapped_column(String(16), default="possible")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class PatientMerge(Base):
    """An ADT^A40 (or admin) merge: the merged record's studies, cases and orders moved to the survivor."""

    __tablename__ = "patient_merges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    surviving_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    merged_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    merged_patient_id: Mapped[str] = mapped_column(String(64))
    merged_issuer: Mapped[str] = mapped_column(String(64), default="")
    moved: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"studies": [...], "cases": [...], ...}
    source: Mapped[str] = mapped_column(String(64), default="")  # e.g. "hl7:<control id>"
    actor: Mapped[str] = mapped_column(String(128), default="system")
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class PeerValidation(Base):
    """One go-live validation run against a site's systems; ``steps`` is its checklist."""

    __tablename__ = "peer_validations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    peer_id: Mapped[int] = mapped_column(ForeignKey("dicom_peers.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | passed | failed
    #: [{"step": "c-echo", "ok": true, "detail": "...", "latency_ms": 3.1, "throughput_mb_s": null}, ...]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_by: Mapped[str] = mapped_column(String(128), default="")
