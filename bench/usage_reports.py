"""Usage reports on a large ledger: the console's report (this month, by day and model, one tenant) read from the
daily sums, against the same report summed from the ledger's rows.

    .venv/bin/python bench/usage_reports.py [--rows 1000000] [--tenants 20] [--database postgresql|sqlite]

Seeds a fresh database through the ledger writer's own insert (which keeps the daily sums), ``--rows`` records
spread over the month so far, ``--tenants`` tenants, 3 keys and 3 models each; then times each report (median
of 5). Prints a Markdown table; writes ``usage_reports.json`` into ``--results-dir``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import fresh_database
from bench.machine import describe, machine, print_table, write_results

REPO = Path(__file__).resolve().parents[1]


def seed(database: Any, rows: int, tenants: int, now: datetime) -> None:
    from gateway.accounting.records import UsageEntry, UsageLedger

    ledger = UsageLedger(database)
    rng = random.Random(0)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = int((now - month_start).total_seconds())
    batch: list[UsageEntry] = []
    for index in range(rows):
        tenant = f"ten_{index % tenants}"
        batch.append(
            UsageEntry(
                request_id=f"req_{index}_{uuid.uuid4().hex[:8]}", tenant_id=tenant,
                key_id=f"{tenant}_key_{rng.randrange(3)}", model=f"model-{rng.randrange(3)}", kind="inference",
                outcome="completed", prompt_tokens=rng.randint(1, 800), completion_tokens=rng.randint(1, 400),
                cost_nanos=rng.randint(0, 10**6), created_at=month_start + timedelta(seconds=rng.randrange(span)),
            )
        )  # fmt: skip
        if len(batch) == 5000:
            ledger.write(batch)
            batch = []
    ledger.write(batch)


def timed(run: Any) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from gateway.accounting.usage import UsageFilters, UsageReports, _ledger_query

    facts = machine()
    print(f"machine: {describe(facts)}")
    with (
        tempfile.TemporaryDirectory() as workdir,
        fresh_database(args.database, workdir, "llmaas_bench_usage") as database,
    ):
        now = datetime(2026, 11, 29, 12)
        started = time.perf_counter()
        seed(database, args.rows, args.tenants, now)
        seeding = time.perf_counter() - started
        filters = UsageFilters(since=now.replace(day=1, hour=0), bucket="day")
        reports = UsageReports(database)

        def from_ledger() -> None:
            with database.session() as session:
                query = _ledger_query(database.engine.dialect.name, "ten_0", filters, ("model",))
                session.execute(query).all()

        rows = {
            "daily sums": timed(lambda: reports.report("ten_0", filters, ("model",))),
            "ledger rows": timed(from_ledger),
        }
    print(f"\n{args.rows:,} ledger rows ({args.tenants} tenants, this month) on {args.database}, seeded in "
          f"{seeding:.0f} s; one tenant's month by day and model, median of 5:\n")  # fmt: skip
    print_table(("read from", "report (ms)"), ((source, f"{ms:.1f}") for source, ms in rows.items()))
    output = write_results(args, "usage_reports.json", facts, seconds_to_seed=seeding, report_ms=rows)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
