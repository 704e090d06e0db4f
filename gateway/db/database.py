"""Database connection and migration: ``LLMAAS_DATABASE_URL`` or SQLite (WAL) in the data dir. Migrations run at
every start, one process at a time (an advisory lock on PostgreSQL, a lock file beside the SQLite file)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from filelock import FileLock
from sqlalchemy import CursorResult, Result, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.private_files import FILE_MODE, private_file

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_ID = 0x4C4C4D41  # "LLMA": pg_advisory_xact_lock key


def affected_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE changed (its result is a ``CursorResult``, which the session's typing hides)."""
    return cast("CursorResult[Any]", result).rowcount


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'llmaas.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


FOREIGN_KEYS_OFF = "llmaas_foreign_keys_off"
"""Set in a pooled SQLite connection's info by the migrations, which turn foreign keys off while they run."""


def _foreign_keys_on_again(dbapi_connection: Any, record: Any) -> None:
    """A connection the migrations used comes back to the pool with its foreign keys on (its transaction ended)."""
    if record.info.pop(FOREIGN_KEYS_OFF, False):
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _keep_sqlite_private(database_file: str | None) -> None:
    """The database file made 0600 before SQLite opens it (SQLite creates its -wal and -shm with the
    database file's mode), and an existing install's files brought to 0600 too."""
    if database_file in (None, "", ":memory:") or database_file.startswith("file:"):
        return
    path = Path(database_file)
    private_file(path)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", FILE_MODE)


class Database:
    """An engine plus a session factory; ``migrate()`` brings the schema to the latest revision."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "checkin", _foreign_keys_on_again)
            _keep_sqlite_private(self.engine.url.database)
        else:
            self.engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self, revision: str = "head") -> None:
        from alembic import command
        from alembic.config import Config

        logging.getLogger("alembic").setLevel(logging.WARNING)

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        database_file = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        on_disk = database_file not in (None, "", ":memory:")
        with (
            FileLock(f"{database_file}.migrate.lock") if on_disk else contextlib.nullcontext(),
            self.engine.begin() as connection,
        ):
            if self.engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
