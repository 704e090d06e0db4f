"""The fine-tuning tables (jobs, their events and checkpoints) and the adapter registry's table, on their
own declarative base; the gateway's Alembic migrations create them beside its own tables."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class AdaptersBase(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class JobStatus(StrEnum):
    """A fine-tuning job's ``status``, as OpenAI names them."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FineTuningJob(AdaptersBase):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_ft_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_ft_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    tenant_name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    lora: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(16), default="supervised")
    status: Mapped[str] = mapped_column(String(24))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256))
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    """Reserved against the tenant's budget when the job was created (with ``reserved_cost_nanos``)."""
    reserved_cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The base model and the models the job continues from (``adapters.lineage``); None on older rows."""
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When the job was charged to the ledger: in the same transaction as its final status."""
    budget_released_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When a gateway replaced the job's budget reservation by its charge in the limiter."""


class JobEvent(AdaptersBase):
    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index("ux_fine_tuning_events_public_id", "public_id", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    """Internal: its order is the events' order; never shown (it would count every tenant's events)."""
    public_id: Mapped[str] = mapped_column(String(40))
    """``ftevent-`` + 24 random hex digits: the id the API shows and pages by."""
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobCheckpoint(AdaptersBase):
    __tablename__ = "fine_tuning_checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Adapter(AdaptersBase):
    """A servable fine-tuned model: ``id`` doubles as vLLM's LoRA int id; ``path`` is relative to the
    adapter store and made only of ids we generated."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str] = mapped_column(String(40))
    parent: Mapped[str | None] = mapped_column(String(256))
    """The model it was trained from: the fine-tuned model its job continued, None when that was the base model."""
    path: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime)
