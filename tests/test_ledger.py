"""The ledger writer on both databases: a poisoned batch does not stop later rows, an unreachable database
loses nothing, a full backlog refuses new requests instead of dropping records, and a shutdown that cannot
write leaves what is left in the journal for the next start, which writes it once."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from gateway.accounting.journal_files import read_lines
from gateway.accounting.ledger import LedgerFull, LedgerWriter
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.clock import utcnow
from gateway.db import Database, UsageRecord


def entry(**overrides: object) -> UsageEntry:
    values: dict[str, object] = {
        "request_id": f"req_{uuid.uuid4().hex}",
        "tenant_id": "ten_1",
        "key_id": "key_1",
        "model": "m",
        "kind": "inference",
        "outcome": "completed",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "cost_nanos": 0,
        "created_at": utcnow(),
    }
    values.update(overrides)
    return UsageEntry(**values)  # type: ignore[arg-type]


def rows(database: Database) -> int:
    with database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(UsageRecord)))


def write_all(writer: LedgerWriter, entries: list[UsageEntry]) -> None:
    for item in entries:
        writer.claim()
        writer.record(item)


def test_a_poisoned_batch_is_split_and_only_the_bad_row_set_aside(database: Database, tmp_path: Path) -> None:
    dead: list[int] = []
    writer = LedgerWriter(UsageLedger(database).write, tmp_path, flush_interval=0.05, on_dead_letter=dead.append)
    poison = entry(model=None)  # NOT NULL: the database refuses this row, and only this one
    write_all(writer, [entry() for _ in range(10)] + [poison] + [entry() for _ in range(5)])
    assert writer.wait_flushed()
    write_all(writer, [entry() for _ in range(3)])  # the writer goes on after it
    assert writer.wait_flushed()
    writer.close()
    assert rows(database) == 18
    assert dead == [1]
    set_aside = [json.loads(line) for line in (tmp_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [item["entry"]["request_id"] for item in set_aside] == [poison.request_id]
    assert writer.backlog == 0


def test_rows_too_long_for_postgresql_are_set_aside(tmp_path: Path, database: Database) -> None:
    """What used to stop the ledger for good: a value longer than its column (PostgreSQL enforces lengths)."""
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce column lengths")
    writer = LedgerWriter(UsageLedger(database).write, tmp_path, flush_interval=0.05)
    write_all(writer, [entry(end_user="u" * 300), entry(), entry(client_request_id="c" * 200), entry()])
    assert writer.wait_flushed()
    writer.close()
    assert rows(database) == 2
    assert len((tmp_path / "dead-letter.jsonl").read_text().splitlines()) == 2


class Unreachable:
    """The ledger's write, failing as an unreachable database does until ``up`` is set."""

    def __init__(self, write: object) -> None:
        self._write = write
        self.up = threading.Event()
        self.attempts = 0

    def __call__(self, entries: list[UsageEntry]) -> None:
        self.attempts += 1
        if not self.up.is_set():
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        self._write(entries)  # type: ignore[operator]


def test_an_unreachable_database_loses_nothing(database: Database, tmp_path: Path) -> None:
    write = Unreachable(UsageLedger(database).write)
    dead: list[int] = []
    writer = LedgerWriter(write, tmp_path, flush_interval=0.05, on_dead_letter=dead.append)
    write_all(writer, [entry() for _ in range(20)])
    time.sleep(0.5)
    assert write.attempts >= 2 and rows(database) == 0
    write.up.set()
    assert writer.wait_flushed(timeout=15)
    writer.close()
    assert rows(database) == 20 and dead == []


def test_a_full_backlog_refuses_new_requests_instead_of_dropping_records(database: Database, tmp_path: Path) -> None:
    write = Unreachable(UsageLedger(database).write)
    writer = LedgerWriter(write, tmp_path, flush_interval=0.05, capacity=5)
    write_all(writer, [entry() for _ in range(5)])
    with pytest.raises(LedgerFull) as refused:
        writer.claim()
    assert refused.value.status_code == 503
    write.up.set()
    assert writer.wait_flushed(timeout=15)
    writer.claim()  # room again
    writer.unclaim()
    writer.close()
    assert rows(database) == 5


def test_a_shutdown_that_cannot_write_leaves_the_journal_and_the_next_start_writes_once(
    database: Database, tmp_path: Path
) -> None:
    write = Unreachable(UsageLedger(database).write)
    writer = LedgerWriter(write, tmp_path, flush_interval=10, shutdown_seconds=0.3)
    entries = [entry() for _ in range(7)]
    write_all(writer, entries)
    writer.close()
    journals = list(tmp_path.glob("journal-*.jsonl"))
    assert len(journals) == 1 and len(read_lines(journals[0])) == 7
    shutil.copy(journals[0], tmp_path / "spool-0-copy.jsonl")  # as if replayed twice (an older version's spool)
    restarted = LedgerWriter(UsageLedger(database).write, tmp_path)
    assert restarted.replay() == 14
    restarted.close()
    assert list(tmp_path.glob("spool-*.jsonl")) == [] and list(tmp_path.glob("journal-*")) == []
    assert rows(database) == 7
