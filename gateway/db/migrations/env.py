"""Alembic environment: runs on the connection ``Database.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from adapters.store import AdaptersBase
from gateway.db.database import FOREIGN_KEYS_OFF
from gateway.db.schema import Base

TARGET_METADATA = [Base.metadata, AdaptersBase.metadata]

connection = context.config.attributes["connection"]
if connection.dialect.name == "sqlite":
    # Batch mode rebuilds a table by copy, drop and rename: with foreign keys enforced, dropping the old table
    # would delete every row that refers to it (ON DELETE CASCADE: a tenant table rebuilt, all its keys gone).
    # Off before the transaction's first write; the pool turns them on again when the connection returns.
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.connection.info[FOREIGN_KEYS_OFF] = True
context.configure(connection=connection, target_metadata=TARGET_METADATA, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
