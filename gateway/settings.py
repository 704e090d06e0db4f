"""Gateway settings, read from the environment with the ``LLMAAS_`` prefix (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.settings import default_data_dir


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMAAS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "info"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. Unset: SQLite in data_dir."
    )
    redis_url: str | None = Field(default=None, description="Share limits across gateway processes through Redis.")
    admin_key: SecretStr | None = Field(
        default=None, min_length=16, description="Unset: generated on first start into <data_dir>/admin_key (0600)."
    )
    key_cache_ttl_seconds: float = Field(
        default=5.0, ge=0, le=5, description="How long a key lookup is cached; revocation elsewhere takes this long."
    )
    meter_flush_interval_seconds: float = Field(
        default=0.5, gt=0, le=1, description="Usage records are written in batches this often."
    )
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="Largest file accepted by /v1/files.")
    embedded_worker: bool = Field(default=True, description="`llmaas serve` also runs a fine-tuning worker.")
    reservation_lease_seconds: float = Field(
        default=900, gt=0, description="Redis: a crashed gateway's reservations and slots are freed after this."
    )
