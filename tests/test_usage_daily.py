"""Usage reports from the daily sums equal those from the ledger itself, on both databases: whatever the
grouping, the filters and the period, with records written twice (a retried batch) counted once, records
without a key, several tenants, days and months. (How fast: ``bench/usage_reports.py``.)"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import MetaData, Table, insert

from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.accounting.usage import UsageFilters, UsageReports, _ledger_query, _usage_row
from gateway.db import Database

GROUPINGS = [(), ("model",), ("key",), ("tenant", "model"), ("tenant", "key", "model", "kind")]


def entries(count: int, seed: int = 0) -> list[UsageEntry]:
    rng = random.Random(seed)
    start = datetime(2026, 10, 28)
    return [
        UsageEntry(
            request_id=f"req_{uuid.UUID(int=rng.getrandbits(128)).hex}",
            tenant_id=rng.choice(["ten_a", "ten_b"]),
            key_id=rng.choice(["key_1", "key_2", None]),
            model=rng.choice(["base", "ft:base:a::1"]),
            kind=rng.choice(["inference", "inference", "eval", "fine_tuning"]),
            outcome="completed",
            prompt_tokens=rng.randint(0, 500),
            completion_tokens=rng.randint(0, 500),
            cost_nanos=rng.randint(0, 10**6),
            created_at=start + timedelta(seconds=rng.randint(0, 8 * 86400)),
        )
        for _ in range(count)
    ]


def from_ledger(database: Database, tenant_id: str | None, filters: UsageFilters, group_by: tuple) -> list[str]:
    """The same report's rows, summed from the ledger's own rows (the reference)."""
    with database.session() as session:
        query = _ledger_query(session.get_bind().dialect.name, tenant_id, filters, group_by)
        rows = [_usage_row(dict(row._mapping)) for row in session.execute(query)]
    return sorted(str(sorted(row.items())) for row in rows if row["requests"])


def test_daily_sums_report_what_the_ledger_holds(database: Database) -> None:
    ledger = UsageLedger(database)
    written = entries(400)
    ledger.write(written[:250])
    ledger.write(written[200:])  # 50 written twice: a retried batch
    reports = UsageReports(database)
    cases = [
        (None, UsageFilters(bucket="day")),
        ("ten_a", UsageFilters(bucket="month")),
        ("ten_b", UsageFilters(bucket="none", since=datetime(2026, 11, 1), until=datetime(2026, 11, 3))),
        ("ten_a", UsageFilters(bucket="day", key_id="key_1", model="base")),
    ]
    for tenant_id, filters in cases:
        for group_by in GROUPINGS:
            got = reports.report(tenant_id, filters, group_by)  # type: ignore[arg-type]
            expected = from_ledger(database, tenant_id, filters, group_by)
            assert sorted(str(sorted(row.items())) for row in got["data"]) == expected, (filters, group_by)
    total = reports.report(None, UsageFilters(bucket="none"), ())
    assert total["totals"]["requests"] == 400  # each record once


def test_the_migration_sums_the_ledger_written_before_it(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    database.migrate("0005")  # a ledger from before the daily sums
    written = entries(300, seed=1)
    with database.session() as session:
        old_table = Table("usage_records", MetaData(), autoload_with=session.connection())  # as it was then
        session.execute(insert(old_table), [{k: v for k, v in e.row().items() if k in old_table.c} for e in written])
    database.migrate()
    got = UsageReports(database).report(None, UsageFilters(bucket="day"), ("tenant", "key", "model", "kind"))
    expected = from_ledger(database, None, UsageFilters(bucket="day"), ("tenant", "key", "model", "kind"))
    assert sorted(str(sorted(row.items())) for row in got["data"]) == expected
    assert got["totals"]["requests"] == 300
    database.dispose()
