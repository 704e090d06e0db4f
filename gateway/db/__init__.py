"""Persistence: SQLAlchemy 2 tables, the database engine (SQLite in WAL mode by default, PostgreSQL in
production) and Alembic migrations applied at start."""

from gateway.db.database import Database, affected_rows
from gateway.db.schema import (
    ApiKey,
    AuditEntry,
    Base,
    Batch,
    BatchRequest,
    ConsoleSession,
    Eval,
    EvalRun,
    EvalRunItem,
    File,
    IdempotencyKey,
    ModelAlias,
    ModelAliasVersion,
    ResponseInputItem,
    StoredResponse,
    Tenant,
    UsageDaily,
    UsageRecord,
)

__all__ = [
    "ApiKey",
    "AuditEntry",
    "Base",
    "Batch",
    "BatchRequest",
    "ConsoleSession",
    "Database",
    "Eval",
    "EvalRun",
    "EvalRunItem",
    "File",
    "IdempotencyKey",
    "ModelAlias",
    "ModelAliasVersion",
    "ResponseInputItem",
    "StoredResponse",
    "Tenant",
    "UsageDaily",
    "UsageRecord",
    "affected_rows",
]
