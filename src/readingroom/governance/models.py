"""Governance tables: sites, users and memberships, sessions, tokens, access grants,
the audit trail and its seals, share links, retention rules and legal holds."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from readingroom.db import Base, UTCDateTime


class Site(Base):
    """A hospital, imaging centre or partner organisation in the network."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    jurisdiction: Mapped[str] = mapped_column(String(32), default="")
    kind: Mapped[str] = mapped_column(String(16), default="spoke")
    residency_tag: Mapped[str] = mapped_column(String(32), default="")
    institution_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    """A person (or service account) who signs in."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(128), default="")
    email: Mapped[str] = mapped_column(String(255), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    role: Mapped[str] = mapped_column(String(32), default="radiologist")
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The name this person carries in DICOM/HL7 (PN, e.g. ``Hartmann^Anna``): links a referring
    #: clinician to the studies and orders that name them.
    physician_name: Mapped[str] = mapped_column(String(128), default="", index=True)
    #: Consecutive failed logins and the lockout they caused (brute-force protection).
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Base32 TOTP secret (RFC 6238); enabled once the user confirmed a first code.
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Time step (RFC 6238 counter) of the last accepted code: a code is accepted once, never replayed.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: External identity (OIDC issuer + subject) this account is linked to.
    oidc_issuer: Mapped[str] = mapped_column(String(255), default="")
    oidc_subject: Mapped[str] = mapped_column(String(255), default="", index=True)


class SiteMembership(Base):
    """A user belongs to a site (a user may work for several); ``role`` overrides the user's role there."""

    __tablename__ = "site_memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UserSession(Base):
    """A browser session: only the SHA-256 of the cookie is stored, with its CSRF token."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    auth_method: Mapped[str] = mapped_column(String(16), default="password")
    #: False while a second factor is still owed (the session can do nothing else yet).
    mfa_passed: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(128), default="")
    user_agent: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AccessGrant(Base):
    """A relationship that lets a user see a case or study they would not see by role and site.

    Consults, second opinions, conference participation and referrals create
    grants; so does break-the-glass (``kind='break_glass'``), which is flagged
    for review until an auditor closes it.
    """

    __tablename__ = "access_grants"
    __table_args__ = (Index("ix_access_grants_user", "user_id", "revoked_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=True,
                                                index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    #: Whether the patient's other (prior) studies are visible too.
    include_priors: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    granted_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: '' (no review needed), 'pending' or 'reviewed'.
    review_state: Mapped[str] = mapped_column(String(16), default="", index=True)
    reviewed_by: Mapped[str] = mapped_column(String(128), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    review_note: Mapped[str] = mapped_column(Text, default="")


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, the secret is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditRecord(Base):
    """One audited action: who did what to which resource, when, from where, outcome."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_records_resource", "resource_type", "resource_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(32), default="")
    resource_id: Mapped[str] = mapped_column(String(128), default="")
    #: Indexed: "who looked at this patient's images" is the question an audit search asks most.
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    #: Needs an auditor's look (break-the-glass, denied access bursts, ...).
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class AuditSeal(Base):
    """The hash chain over the audit trail, kept beside it so audit rows are never updated.

    ``seq`` orders the chain; ``mac`` = HMAC(key, previous mac, seq, record_id,
    canonical record). No foreign key on purpose: a deleted record must leave
    its seal behind so ``audit verify`` can report it.
    """

    __tablename__ = "audit_seals"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=False)
    record_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), unique=True)
    mac: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ShareLink(Base):
    """A capability URL to one study or case; only the SHA-256 of the secret is stored."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    case_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=True)
    #: 'view' (rendered images and metadata) or 'download' (also the DICOM files).
    mode: Mapped[str] = mapped_column(String(16), default="view")
    deidentify: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Secret that seeds the consistent UID remapping of a de-identified share.
    uid_salt: Mapped[str] = mapped_column(String(64), default="")
    passcode_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    recipient: Mapped[str] = mapped_column(String(255), default="")
    #: Residency region of the recipient; checked against the study site's residency tag.
    recipient_region: Mapped[str] = mapped_column(String(32), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    max_accesses: Mapped[int | None] = mapped_column(Integer, nullable=True)
    access_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_passcodes: Mapped[int] = mapped_column(Integer, default=0)
    last_access_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RetentionRule(Base):
    """Studies of a site/modality older than ``min_age_days`` may be purged (never with an open case or hold)."""

    __tablename__ = "retention_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), nullable=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    min_age_days: Mapped[int] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LegalHold(Base):
    """Keeps a study (or every study of a patient) from being purged until released."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    released_by: Mapped[str] = mapped_column(String(128), default="")


class BlobDeletion(Base):
    """Bytes whose index rows are gone (a retention purge) and that are still to be removed from storage.

    Written in the transaction that deletes the index rows, removed once the
    blob is gone: a crash in between leaves a row here instead of an
    anonymous orphan, so ``check`` knows the blob is owed a deletion (and
    ``check --repair`` finishes it) rather than re-indexing purged data.
    ``requested_at`` is wall-clock time on purpose: it is compared with the
    file's modification time to spare a blob that was written again since.
    """

    __tablename__ = "blob_deletions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(255), index=True)
    #: The instance the blob held: its SOP Instance UID finds a re-received copy by the unique index.
    sop_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
