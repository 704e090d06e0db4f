"""Console pages at scale: every page of the console (and the JSON its scripts read) timed against a gateway whose
database holds ``--tenants`` tenants (3 keys each) and ``--rows`` ledger records this month.

    .venv/bin/python bench/console_pages.py [--rows 1000000] [--tenants 100] [--database sqlite|postgresql]

Seeds a fresh database in bulk (tenants and keys through the tenancy service; the ledger's rows with one
multi-row insert per 50,000 on SQLite or ``COPY`` on PostgreSQL, and their daily sums computed once beside them,
as the ledger writer keeps them), starts the real gateway on it (``bench/fake_gateway.py``: the fake engine, the
pages are what is timed), signs in as one tenant and as the operator, and times each GET on loopback: the
median and the worst of ``--repeat`` after one warm-up. Prints a Markdown table with the machine line; writes
``console_pages.json`` into ``--results-dir``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import httpx

from bench.loadgen import fresh_database, running_gateway
from bench.machine import describe, machine, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "sk-admin-bench-console-pages-0000000000"
MODEL = "smollm2-135m-instruct"
MODELS = (MODEL, "model-b", "model-c")
KINDS = ("inference", "inference", "inference", "batch", "eval")
TENANT_PAGES = (
    "/console/usage",
    "/console/usage.csv",
    "/console/keys",
    "/console/models",
    "/console/aliases",
    "/console/fine-tuning",
    "/console/evaluations",
    "/console/playground",
    "/console/api/v1/models",
    "/console/api/v1/fine_tuning/jobs?limit=20",
    "/console/api/v1/files",
    "/console/api/v1/evals?limit=100",
    "/console/api/v1/aliases",
    "/console/api/v1/usage?group_by=model",
)
OPERATOR_PAGES = (
    "/console/admin/tenants",
    "/console/admin/usage",
    "/console/admin/usage.csv",
    "/console/admin/service",
    "/console/admin/service.json",
    "/console/admin/aliases",
    "/console/admin/audit",
    "/console/api/admin/v1/tenants",
)
_COLUMNS = (
    "request_id", "tenant_id", "key_id", "model", "kind", "outcome", "prompt_tokens", "completion_tokens",
    "cached_tokens", "cost", "created_at",
)  # fmt: skip


def seed_tenants(database: Any, tenants: int) -> tuple[list[tuple[str, list[str]]], str]:
    """``tenants`` tenants with 3 keys each: (tenant id, key ids) of each, and one tenant's key (to sign in)."""
    from gateway.tenancy.models import KeyCreate, TenantCreate
    from gateway.tenancy.service import TenancyService

    service = TenancyService(database)
    made: list[tuple[str, list[str]]] = []
    secret = ""
    for index in range(tenants):
        tenant = service.create_tenant(TenantCreate(name=f"tenant-{index:03d}", monthly_token_budget=10**9))
        keys = [service.create_key(tenant.id, KeyCreate(name=f"key-{k}")) for k in range(3)]
        made.append((tenant.id, [key.id for key in keys]))
        secret = secret or keys[0].key
    return made, secret


def ledger_rows(tenants: list[tuple[str, list[str]]], rows: int, now: datetime) -> list[tuple[Any, ...]]:
    rng = random.Random(0)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    span = max(1, int((now - month_start).total_seconds()))
    out = []
    for index in range(rows):
        tenant_id, keys = tenants[index % len(tenants)]
        kind = rng.choice(KINDS) if index % 1000 else "fine_tune"
        out.append((
            f"req_{index}", tenant_id, None if kind == "fine_tune" else rng.choice(keys), rng.choice(MODELS), kind,
            "completed", rng.randint(1, 800), rng.randint(1, 400), 0, Decimal(rng.randint(0, 10**6)) / 10**9,
            month_start + timedelta(seconds=rng.randrange(span)),
        ))  # fmt: skip
    return out


def daily_sums(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """What the ledger writer keeps in ``usage_daily`` for these rows."""
    sums: dict[tuple[str, str, str, str, str], list[Any]] = {}
    for _, tenant_id, key_id, model, kind, _, prompt, completion, cached, cost, created_at in rows:
        group = (tenant_id, created_at.strftime("%Y-%m-%d"), key_id or "", model, kind)
        total = sums.setdefault(group, [0, 0, 0, 0, Decimal(0)])
        total[0] += 1
        total[1] += prompt
        total[2] += completion
        total[3] += cached
        total[4] += cost
    names = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost")
    return [
        {"tenant_id": t, "day": d, "key_id": k, "model": m, "kind": kind, **dict(zip(names, values, strict=True))}
        for (t, d, k, m, kind), values in sums.items()
    ]


def insert_ledger(database: Any, rows: list[tuple[Any, ...]], history_months: int) -> None:
    """The rows, their daily sums, and ``history_months`` earlier months of daily sums like this month's (what a
    year of service leaves in ``usage_daily``; their ledger rows are beside the point: no page reads them)."""
    from sqlalchemy import insert

    from gateway.db import UsageDaily

    columns = ", ".join(_COLUMNS)
    with database.engine.begin() as connection:
        if database.engine.dialect.name == "postgresql":
            cursor = connection.connection.driver_connection.cursor()
            with cursor.copy(f"COPY usage_records ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            placeholders = ", ".join("?" * len(_COLUMNS))
            statement = f"INSERT INTO usage_records ({columns}) VALUES ({placeholders})"
            for start in range(0, len(rows), 50_000):
                chunk = [
                    (*row[:9], str(row[9]), row[10].strftime("%Y-%m-%d %H:%M:%S.%f"))
                    for row in rows[start : start + 50_000]
                ]
                connection.exec_driver_sql(statement, chunk)
        sums = daily_sums(rows)
        for months_back in range(history_months + 1):
            shifted = [{**row, "day": _months_before(row["day"], months_back)} for row in sums]
            connection.execute(insert(UsageDaily), shifted)


def _months_before(day: str, months: int) -> str:
    year, month, rest = int(day[:4]), int(day[5:7]), day[7:]
    index = year * 12 + month - 1 - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}{rest}"


def timed(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    response = client.get(path)  # warm-up (and the check that the page answers)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(path).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(samples), "max_ms": max(samples), "bytes": len(response.content)}


def signed_in(base: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=base, headers={"origin": base}, timeout=60)
    landed = client.post("/console/login", data={"key": key}, follow_redirects=True)
    if landed.status_code != 200:
        raise RuntimeError(f"could not sign in: {landed.status_code}")
    page = client.get("/console/admin/aliases" if key == ADMIN_KEY else "/console/playground").text
    client.headers["x-csrf-token"] = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    return client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--history-months", type=int, default=11, help="earlier months of daily sums")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    facts = machine()
    print(f"machine: {describe(facts)}")
    with (
        tempfile.TemporaryDirectory() as workdir,
        fresh_database(args.database, workdir, "llmaas_bench_console") as database,
        ExitStack() as stack,
    ):
        started = time.perf_counter()
        tenants, tenant_key = seed_tenants(database, args.tenants)
        rows = ledger_rows(tenants, args.rows, datetime.now(UTC).replace(tzinfo=None))
        insert_ledger(database, rows, args.history_months)
        del rows
        seeding = time.perf_counter() - started
        print(f"seeded {args.tenants} tenants, {args.rows:,} ledger rows and {args.history_months} earlier months of "
              f"daily sums on {args.database} in {seeding:.0f} s")  # fmt: skip
        settings = {
            "LLMAAS_DATA_DIR": workdir,
            "LLMAAS_DATABASE_URL": database.url,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_LOG_LEVEL": "warning",
        }
        log = Path(workdir) / "gateway.log"
        gateway = stack.enter_context(running_gateway(settings, log, MODEL, 120, script=("bench/fake_gateway.py",)))
        timings: dict[str, dict[str, float]] = {}
        for key, pages in ((tenant_key, TENANT_PAGES), (ADMIN_KEY, OPERATOR_PAGES)):
            with closing(signed_in(gateway.base_url, key)) as client:
                for path in pages:
                    timings[path] = timed(client, path, args.repeat)
    rows_text = f"{args.rows:,}"
    print(f"\n{args.tenants} tenants, {rows_text} ledger rows this month (day {datetime.now(UTC).day}) and "
          f"{args.history_months} months before, {args.database}; GET on loopback, "
          f"median and worst of {args.repeat} after a warm-up:\n")  # fmt: skip
    print_table(
        ("page", "median (ms)", "worst (ms)", "bytes"),
        (
            (f"`{path}`", f"{t['median_ms']:.1f}", f"{t['max_ms']:.1f}", f"{t['bytes']:,.0f}")
            for path, t in timings.items()
        ),
    )
    output = write_results(args, "console_pages.json", facts, seconds_to_seed=seeding, pages=timings)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
