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
    hl7_port: int = 2575
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
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = Field(default=8 * 1024**3, description="Largest accepted STOW-RS request body")
    max_associations: int = 16
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
