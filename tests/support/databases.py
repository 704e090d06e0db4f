"""Databases for tests: a fresh PostgreSQL database, the Redis database the limiter tests use, and the ledger as a
gateway left it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/15"


@contextmanager
def fresh_postgres_database(prefix: str = "llmaas_test") -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def ledger_rows(database_url: str, tenant_id: str, kind: str | None = None) -> list[tuple[str | None, int, int, str]]:
    """The tenant's usage records (of ``kind``, if given) as written: (client's request id, prompt tokens,
    completion tokens, outcome)."""
    query = (
        "SELECT client_request_id, prompt_tokens, completion_tokens, outcome FROM usage_records WHERE tenant_id = :t"
    )
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(query + (" AND kind = :k" if kind else "")), {"t": tenant_id, "k": kind}).all()
    finally:
        engine.dispose()
    return [(row[0], row[1], row[2], row[3]) for row in rows]
