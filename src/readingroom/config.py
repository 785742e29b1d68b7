"""One settings object for every entry point.

Precedence, highest first: explicit overrides (CLI flags), ``READINGROOM_*``
environment variables, ``<data-dir>/readingroom.toml``, built-in defaults.
Keeping a single object means the server, the CLI and the tests can never
disagree about where the database or the blobs live.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_NAME = "readingroom.toml"
DEFAULT_DATA_DIR = Path("readingroom-data")

DuplicatePolicy = Literal["reject", "overwrite"]


class Settings(BaseSettings):
    """Runtime configuration of one ReadingRoom process."""

    model_config = SettingsConfigDict(env_prefix="READINGROOM_", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data dir"
    )
    storage_url: str | None = Field(
        default=None, description="Blob store URL; default: file:// directory in the data dir"
    )
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(
        default=None, description="Base URL clients use to reach this server (for RetrieveURL/BulkDataURI)"
    )
    dicom_port: int = 11112
    aet: str = "READINGROOM"
    hl7_port: int = Field(default=2575, description="HL7 v2 MLLP port for inbound orders and ADT (0 disables)")
    accept_unknown_aets: bool = Field(
        default=False, description="Accept associations from calling AE titles that are not configured peers"
    )
    accept_loopback_aets: bool = Field(
        default=False, description="Accept any calling AE title from 127.0.0.0/8 (demo convenience)"
    )
    duplicate_policy: DuplicatePolicy = Field(
        default="reject",
        description="Same SOP Instance UID with different bytes: 'reject' keeps the first, 'overwrite' replaces it",
    )
    stable_age_seconds: float = Field(
        default=60.0, description="A study is complete when no instance arrived for this long"
    )
    scheduler_interval_seconds: float = 5.0
    claim_timeout_minutes: float = Field(
        default=30.0, description="A claim with no activity for this long returns to the pool"
    )
    routing_refresh_seconds: float = Field(
        default=60.0, description="Re-evaluate waiting cases this often (shifts, overflow)"
    )
    notify_webhook_url: str | None = Field(default=None, description="POST escalation notifications here")
    # -- critical results (collab/critical.py) ------------------------------------------------------------
    critical_ack_minutes: dict[str, float] = Field(
        default_factory=lambda: {"1": 60.0, "2": 240.0, "3": 4320.0},
        description="Critical-result urgency levels (ACR-style) and the minutes allowed to acknowledge each")
    critical_level_names: dict[str, str] = Field(
        default_factory=lambda: {"1": "critical", "2": "urgent", "3": "significant, non-urgent"},
        description="Display names of the critical-result levels")
    critical_escalation_contacts: list[str] = Field(
        default_factory=list,
        description="Usernames told at the last escalation step of a critical result, besides site supervisors")
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(default=8 * 1024**3, description="Largest accepted STOW-RS request body")
    max_associations: int = 16
    # -- sessions, login protection, second factor, OIDC (governance) ---------------------------------
    session_hours: float = Field(default=12.0, description="Browser session lifetime")
    session_idle_minutes: float = Field(default=60.0, description="A session unused this long ends")
    session_cookie_secure: bool = Field(
        default=True, description="Mark the session cookie Secure (browsers allow it on http://localhost)")
    login_max_failures: int = Field(default=5, description="Failed logins in a row before the account locks")
    login_lockout_minutes: float = Field(default=15.0, description="How long a locked account stays locked")
    login_rate_per_minute: int = Field(default=20, description="Login attempts per client address per minute")
    mfa_required_roles: list[str] = Field(
        default_factory=list, description="Roles that must use a TOTP second factor for interactive login")
    oidc_issuer: str | None = Field(default=None, description="OpenID Provider issuer URL (e.g. a Keycloak realm)")
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid profile email"
    oidc_role_claim: str = Field(default="", description="Claim holding ReadingRoom roles (e.g. 'roles')")
    oidc_auto_create: bool = Field(default=False, description="Create unknown OIDC users with oidc_default_role")
    oidc_default_role: str = "referring_clinician"
    # -- DIMSE TLS --------------------------------------------------------------------------------------
    dicom_tls_port: int | None = Field(default=None, description="Also listen for DICOM over TLS on this port")
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = Field(default=None, description="CA bundle; when set, callers need a client cert")
    # -- audit ------------------------------------------------------------------------------------------
    audit_syslog_url: str | None = Field(
        default=None, description="Forward DICOM audit messages (ATNA) as syslog: udp://host:514 or tcp://host:601")
    audit_seal_grace_seconds: float = Field(
        default=600.0, description="An unsealed audit row older than this is reported by 'audit verify'")
    audit_key_file: Path | None = Field(
        default=None, description="HMAC key of the audit hash chain (default <data-dir>/secrets/audit.key)")
    audit_anchor_file: Path | None = Field(
        default=None, description="Where the chain head is recorded (default <data-dir>/secrets/audit.anchor)")
    audit_syslog_ca: Path | None = Field(
        default=None, description="CA bundle that signs the tls:// syslog receiver's certificate (default: system)")
    break_glass_minutes: float = Field(default=240.0, description="How long a break-the-glass grant lasts")
    # -- share links, retention, residency ---------------------------------------------------------------
    share_max_days: float = Field(default=30.0, description="Longest allowed share link lifetime")
    share_passcode_attempts: int = Field(default=5, description="Wrong passcodes before a share link locks")
    share_deidentified_crosses_residency: bool = Field(
        default=True, description="A de-identified share may go to a region other than the study site's residency tag")
    retention_mode: Literal["off", "dry-run", "purge"] = Field(
        default="off", description="What the daily retention job does")
    # -- conferences and referrals (collaboration) -------------------------------------------------------
    conference_access_hours_before: float = Field(
        default=48.0, description="Attendees may open a conference's cases this long before it starts")
    conference_access_hours_after: float = Field(
        default=24.0, description="... and until this long after it is scheduled to end")
    referral_sla_hours: dict[str, float] = Field(
        default_factory=lambda: {"critical": 1.0, "stat": 4.0, "urgent": 24.0, "routine": 72.0},
        description="Hours a receiving site has to accept or decline a referral, per priority")
    referral_access_days: float = Field(
        default=90.0, description="How long the referring partner may open the accepted referral's case")
    # -- consults, second opinions, peer review (collaboration) -----------------------------------------------
    peer_review_rate: float = Field(
        default=0.05, ge=0.0, le=1.0, description="Share of final reads sampled for peer review (per case, stable)")
    consult_access_grace_hours: float = Field(
        default=24.0, ge=0.0, description="How long a consultant keeps access to a case after answering")
    # -- interop outbox (interop/outbox.py) ------------------------------------------------------------------
    outbox_interval_seconds: float = Field(default=2.0, gt=0, description="How often the outbox delivers due work")
    outbox_backoff_base_seconds: float = Field(
        default=5.0, gt=0, description="Wait after a destination's first failed attempt; doubles per attempt")
    outbox_backoff_max_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait between two attempts of one outbox item")
    outbox_alert_after_attempts: int = Field(
        default=5, ge=1, description="Failed attempts after which an item raises a 'failed_delivery' exception item "
        "(it keeps being retried)")
    outbox_lease_seconds: float = Field(
        default=120.0, gt=0, description="How long a worker holds an item it is delivering; an expired lease "
        "(a crashed worker) is taken over")
    outbox_batch: int = Field(default=100, ge=1, description="Most items one outbox run delivers")
    hl7_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Outbound MLLP: connect timeout (a destination's options may override it)")
    hl7_ack_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Outbound MLLP: how long to wait for the ACK (options may override it)")
    # -- order reconciliation and patient identity (interop/reconcile.py, identity.py) -------------------------
    reconcile_window_hours: float = Field(
        default=24.0, gt=0, description="An order without accession match links to a study of the same patient and "
        "procedure when it was requested at most this many hours before the study")
    reconcile_overdue_hours: float = Field(
        default=0.0, ge=0, description="An active order whose study has not come after this many hours raises an "
        "'order_overdue' exception item (0: off)")
    identity_match_rules: list[Literal["id_issuer", "demographics", "id_only"]] = Field(
        default_factory=lambda: ["id_issuer", "demographics"], description="Rules that link patient records across "
        "issuers for a person to confirm: id_issuer (same ID and issuer up to case and spacing: 'match'), "
        "demographics (same name, birth date and sex: 'possible'), id_only (same ID, other issuer: 'possible')")
    # -- forwarding, priors, go-live validation (interop/forwarding.py, priors.py, golive.py) -----------------
    prior_fetch_max_studies: int = Field(
        default=3, ge=0, description="Prior fetching: at most this many of a patient's earlier studies are C-MOVEd "
        "from each prior-source PACS for a new case (newest first)")
    prior_fetch_lookback_days: int = Field(
        default=1825, ge=0, description="Prior fetching: only studies at most this many days old (0: any age)")
    golive_test_instances: int = Field(
        default=6, ge=1, le=200, description="Go-live validation: instances in the synthetic test study "
        "(512x512 CT, about 0.5 MB each)")
    # -- canonical procedures (interop/procedures.py) ----------------------------------------------------------
    procedures_import_max_bytes: int = Field(
        default=5_000_000, ge=1, description="Largest procedure / mapping CSV the API accepts (bigger: 413); "
        "the CLI has no limit")
    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _toml_path_for_next_load
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path is not None and toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'readingroom.db').resolve()}"

    @property
    def effective_storage_url(self) -> str:
        """The blob store URL, defaulting to a directory inside the data dir."""
        if self.storage_url:
            return self.storage_url
        return f"file://{(self.data_dir / 'blobs').resolve()}"

    @property
    def base_url(self) -> str:
        """Base URL for links the server hands out."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


_toml_path_for_next_load: Path | None = None


def load_settings(data_dir: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings for a data dir, reading its ``readingroom.toml`` if present.

    ``overrides`` are values given explicitly (CLI flags); ``None`` values are
    ignored so an unset flag never hides an environment variable.
    """
    global _toml_path_for_next_load
    if data_dir is None:
        data_dir = os.environ.get("READINGROOM_DATA_DIR") or DEFAULT_DATA_DIR
    data_dir = Path(data_dir)
    clean = {k: v for k, v in overrides.items() if v is not None}
    clean["data_dir"] = data_dir
    _toml_path_for_next_load = data_dir / CONFIG_FILE_NAME
    try:
        return Settings(**clean)
    finally:
        _toml_path_for_next_load = None
