"""The tables: tenants (with their quotas), API keys (hash + display prefix only), the usage ledger and uploaded
files. Columns that keep client-supplied strings take their length from ``gateway.bounds``, as the API does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gateway import bounds


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(bounds.TENANT_NAME), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # Quotas; NULL means unlimited.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_requests: Mapped[int | None] = mapped_column(Integer)
    monthly_token_budget: Mapped[int | None] = mapped_column(BigInteger)
    monthly_cost_budget: Mapped[Any | None] = mapped_column(Numeric(20, 9))
    max_tokens_cap: Mapped[int | None] = mapped_column(Integer)
    # {"model id": {"input": USD per 1M tokens, "output": USD per 1M tokens}}
    model_prices: Mapped[dict[str, dict[str, float]]] = mapped_column(JSON, default=dict)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    """Uploaded files may take this much; NULL: the server's default (``LLMAAS_DEFAULT_MAX_STORAGE_BYTES``)."""

    keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(bounds.KEY_NAME), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)

    tenant: Mapped[Tenant] = relationship(back_populates="keys")


class UsageRecord(Base):
    """One row per admitted request (and per fine-tuning job). Kept when its tenant or key is deleted.

    ``request_id`` is the server's id of the request (or the job's id) and unique: a record written twice (a
    retried batch, a spool replayed after a restart) is counted once."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_tenant_time", "tenant_id", "created_at"),
        Index("ux_usage_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    client_request_id: Mapped[str | None] = mapped_column(String(bounds.CLIENT_REQUEST_ID))
    """The client's own correlation id, if it sent one; never a key of anything."""
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(bounds.MODEL))
    kind: Mapped[str] = mapped_column(String(16), default="inference")
    outcome: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost: Mapped[Any] = mapped_column(Numeric(20, 9), default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    end_user: Mapped[str | None] = mapped_column(String(bounds.USER))
    """The request's ``user`` field: the tenant's own end-user id, kept for its abuse monitoring."""


class File(Base):
    """An uploaded file; its bytes live in the data dir under the file's id (never a client-given name)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str] = mapped_column(String(bounds.FILENAME))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)
