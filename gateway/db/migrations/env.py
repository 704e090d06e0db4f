"""Alembic environment: runs on the connection ``Database.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from adapters.store import AdaptersBase
from gateway.db.schema import Base

TARGET_METADATA = [Base.metadata, AdaptersBase.metadata]

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=TARGET_METADATA, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
