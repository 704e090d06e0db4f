"""Tenants, keys and the usage ledger on both databases: SQLite (WAL, the embedded default) and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from adapters.registry import AdapterRegistry
from adapters.store import AdaptersBase
from gateway.accounting.pricing import PriceBook
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.accounting.usage import UsageFilters, UsageReports, usage_csv
from gateway.audit import SYSTEM_ACTOR
from gateway.clock import utcnow
from gateway.db import Base, Database
from gateway.errors import ConflictError, InvalidRequestError, NotFoundError
from gateway.fine_tuning.files import FileStore
from gateway.tenancy.keys import key_hash
from gateway.tenancy.models import KeyCreate, ModelPrice, TenantCreate, TenantUpdate
from gateway.tenancy.service import TenancyService
from gateway.tenant_data.erasure import TenantEraser


@pytest.fixture
def service(database: Database) -> TenancyService:
    return TenancyService(database)


@pytest.fixture
def ledger(database: Database) -> UsageLedger:
    return UsageLedger(database)


@pytest.fixture
def reports(database: Database) -> UsageReports:
    return UsageReports(database)


def test_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), [Base.metadata, AdaptersBase.metadata]) == []
    database.migrate()  # idempotent


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.dispose()


def test_tenant_lifecycle(service: TenancyService, database: Database, tmp_path: Path) -> None:
    created = service.create_tenant(
        TenantCreate(
            name="acme",
            requests_per_minute=60,
            monthly_cost_budget=Decimal("12.5"),
            model_prices={"m": ModelPrice(input=Decimal("0.15"), output=Decimal("0.6"))},
        )
    )
    assert created.status == "active"
    assert service.get_tenant("acme").id == created.id
    assert service.get_tenant(created.id).name == "acme"
    with pytest.raises(ConflictError):
        service.create_tenant(TenantCreate(name="acme"))
    updated = service.update_tenant("acme", TenantUpdate(requests_per_minute=None, tokens_per_minute=1000))
    assert updated.requests_per_minute is None
    assert updated.tokens_per_minute == 1000
    assert updated.monthly_cost_budget == Decimal("12.5")  # untouched fields stay
    assert service.update_tenant("acme", TenantUpdate(status="suspended")).status == "suspended"
    with pytest.raises(InvalidRequestError):
        service.update_tenant("acme", TenantUpdate(name=None))
    assert [t.name for t in service.list_tenants()] == ["acme"]
    files, registry = FileStore(database, tmp_path / "files"), AdapterRegistry(database.sessions, tmp_path)
    TenantEraser(database, files, registry, PriceBook({})).erase("acme", SYSTEM_ACTOR)
    with pytest.raises(NotFoundError):
        service.get_tenant("acme")


def test_keys_are_stored_as_hashes_only(service: TenancyService, database: Database) -> None:
    service.create_tenant(TenantCreate(name="acme"))
    created = service.create_key("acme", KeyCreate(name="ci", allowed_models=["m1"]))
    assert created.key.startswith("sk-")
    assert created.key.startswith(created.prefix)
    identity = service.identify(key_hash(created.key))
    assert identity is not None
    assert identity.tenant_name == "acme"
    assert identity.allowed_models == ("m1",)
    listed = service.list_keys("acme")
    assert [k.id for k in listed] == [created.id]
    assert "key" not in listed[0].model_dump()
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    dumped = repr(rows)
    assert created.key not in dumped
    assert created.key[len(created.prefix) :] not in dumped


def test_key_revocation_and_expiry(service: TenancyService) -> None:
    service.create_tenant(TenantCreate(name="acme"))
    key = service.create_key("acme", KeyCreate(expires_in_days=1))
    assert key.status == "active"
    assert key.expires_at is not None
    revoked = service.revoke_key("acme", key.id)
    assert revoked.status == "revoked"
    identity = service.identify(key_hash(key.key))
    assert identity is not None and identity.revoked
    with pytest.raises(InvalidRequestError):
        service.create_key("acme", KeyCreate(expires_at=datetime(2000, 1, 1)))
    service.create_tenant(TenantCreate(name="other"))
    with pytest.raises(NotFoundError):  # another tenant's key is not found, not forbidden
        service.revoke_key("other", key.id)


def _entry(tenant_id: str, key_id: str, model: str, prompt: int, completion: int, at: datetime) -> UsageEntry:
    return UsageEntry(
        request_id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        key_id=key_id,
        model=model,
        kind="inference",
        outcome="completed",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_nanos=prompt * 150 + completion * 600,
        created_at=at,
    )


def test_usage_breakdown_and_csv(service: TenancyService, ledger: UsageLedger, reports: UsageReports) -> None:
    acme = service.create_tenant(TenantCreate(name="acme"))
    other = service.create_tenant(TenantCreate(name="other"))
    k1 = service.create_key("acme", KeyCreate()).id
    k2 = service.create_key("acme", KeyCreate()).id
    day = datetime(2026, 11, 2, 10, 30)
    ledger.write(
        [
            _entry(acme.id, k1, "a", 10, 5, day),
            _entry(acme.id, k1, "a", 20, 5, day + timedelta(minutes=10)),
            _entry(acme.id, k2, "b", 1, 1, day + timedelta(hours=2)),
            _entry(acme.id, k1, "a", 7, 7, day + timedelta(days=1)),
            _entry(other.id, "k-other", "a", 1000, 1000, day),
        ]
    )
    by_day = reports.report(acme.id, UsageFilters(bucket="day"), ("key", "model"))
    rows = {(r["key_id"], r["model"], r["period_start"]): r for r in by_day["data"]}
    assert rows[(k1, "a", "2026-11-02")]["prompt_tokens"] == 30
    assert rows[(k1, "a", "2026-11-02")]["requests"] == 2
    assert rows[(k1, "a", "2026-11-03")]["total_tokens"] == 14
    assert by_day["totals"]["total_tokens"] == 30 + 10 + 2 + 14
    assert Decimal(rows[(k1, "a", "2026-11-02")]["cost"]) == Decimal(30 * 150 + 10 * 600) / 10**9
    by_hour = reports.report(acme.id, UsageFilters(bucket="hour", until=day + timedelta(hours=23)), ())
    assert [r["period_start"] for r in by_hour["data"]] == ["2026-11-02T10:00:00", "2026-11-02T12:00:00"]
    windowed = reports.report(acme.id, UsageFilters(bucket="none", since=day + timedelta(hours=1)), ("model",))
    assert {r["model"]: r["total_tokens"] for r in windowed["data"]} == {"a": 14, "b": 2}
    everyone = reports.report(None, UsageFilters(bucket="none"), ("tenant",))
    assert {r["tenant_id"]: r["requests"] for r in everyone["data"]} == {acme.id: 4, other.id: 1}
    csv_text = usage_csv(by_day)
    assert csv_text.splitlines()[0].startswith("key_id,model,period_start,requests")
    assert len(csv_text.splitlines()) == 1 + len(by_day["data"])


def test_a_key_name_a_spreadsheet_would_run_is_text_in_the_csv() -> None:
    rows = [{"key": name, "requests": 1, "cost": "0.5"} for name in ('=HYPERLINK("http://x")', "@SUM(A1)", "ci")]
    lines = usage_csv({"data": rows}).splitlines()
    assert lines[1:] == ['"\'=HYPERLINK(""http://x"")",1,0.5', "'@SUM(A1),1,0.5", "ci,1,0.5"]


def test_a_record_written_twice_counts_once(service: TenancyService, ledger: UsageLedger) -> None:
    acme = service.create_tenant(TenantCreate(name="acme"))
    entry = _entry(acme.id, "k", "a", 10, 5, utcnow())
    ledger.write([entry])
    ledger.write([entry, _entry(acme.id, "k", "a", 1, 1, utcnow())])  # a retried batch, a replayed spool
    assert ledger.budget_snapshot(acme.id, utcnow().strftime("%Y-%m")).used_tokens == 15 + 2


def test_the_budget_snapshot_counts_only_this_month(service: TenancyService, ledger: UsageLedger) -> None:
    acme = service.create_tenant(TenantCreate(name="acme"))
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ledger.write(
        [
            _entry(acme.id, "k", "a", 10, 5, now),
            _entry(acme.id, "k", "a", 100, 100, month_start - timedelta(seconds=1)),
        ]
    )
    snapshot = ledger.budget_snapshot(acme.id, now.strftime("%Y-%m"))
    assert snapshot.used_tokens == 15
    assert snapshot.used_cost_nanos == 10 * 150 + 5 * 600
    assert snapshot.open_reservations == ()


def test_a_keys_budget_snapshot_counts_its_own_requests_this_month(
    service: TenancyService, ledger: UsageLedger
) -> None:
    """What a limiter starts a key's own budgets from (after a restart, or on a gateway that never saw the key)."""
    acme = service.create_tenant(TenantCreate(name="acme"))
    other = service.create_tenant(TenantCreate(name="other"))
    now = utcnow()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ledger.write(
        [
            _entry(acme.id, "k1", "a", 10, 5, now),
            _entry(acme.id, "k1", "b", 1, 1, now),
            _entry(acme.id, "k1", "a", 100, 100, month_start - timedelta(seconds=1)),  # last month
            _entry(acme.id, "k2", "a", 1000, 0, now),  # a sibling
            _entry(other.id, "k1", "a", 5000, 0, now),  # another tenant (a key id is never shared; still)
        ]
    )
    snapshot = ledger.key_budget_snapshot(acme.id, "k1", now.strftime("%Y-%m"))
    assert snapshot.used_tokens == 17
    assert snapshot.used_cost_nanos == 11 * 150 + 6 * 600
    assert ledger.key_budget_snapshot(acme.id, "k3", now.strftime("%Y-%m")).used_tokens == 0


def test_the_budget_snapshot_holds_open_jobs_as_reservations(
    service: TenancyService, ledger: UsageLedger, database: Database
) -> None:
    """A job whose reservation is not released yet is a reservation, and its charge (if written) is not yet
    counted as used: a limiter starting from the snapshot counts it once, when the release comes."""
    from adapters.jobs import JobService
    from tests.test_worker import charge_job, job_request

    acme = service.create_tenant(TenantCreate(name="acme"))
    jobs = JobService(database.sessions, on_final=charge_job)
    running = jobs.create(job_request(tenant_id=acme.id, estimated_tokens=500, reserved_cost_nanos=7)).id
    finished = jobs.create(job_request(tenant_id=acme.id, estimated_tokens=300)).id
    jobs.cancel(acme.id, finished)  # charged now (0 tokens), released later by a gateway
    ledger.write([_entry(acme.id, "k", "a", 10, 5, utcnow())])
    snapshot = ledger.budget_snapshot(acme.id, utcnow().strftime("%Y-%m"))
    assert snapshot.used_tokens == 15
    assert {(r.id, r.tokens, r.cost_nanos) for r in snapshot.open_reservations} == {
        (running, 500, 7),
        (finished, 300, 0),
    }


def test_every_bounded_client_string_fits_its_column() -> None:
    from adapters.store import FineTuningJob
    from gateway import bounds
    from gateway.db import ApiKey, File, Tenant, UsageRecord

    def length(column: object) -> int:
        return column.type.length  # type: ignore[attr-defined, no-any-return]

    assert length(UsageRecord.__table__.c.end_user) >= bounds.USER
    assert length(UsageRecord.__table__.c.client_request_id) >= bounds.CLIENT_REQUEST_ID
    assert length(UsageRecord.__table__.c.model) >= bounds.MODEL
    assert length(File.__table__.c.filename) >= bounds.FILENAME
    assert length(ApiKey.__table__.c.name) >= bounds.KEY_NAME
    assert length(Tenant.__table__.c.name) >= bounds.TENANT_NAME
    assert length(FineTuningJob.__table__.c.suffix) >= bounds.SUFFIX
    longest_checkpoint = f"ft:{'m' * 96}:{'t' * 64}:{'s' * 64}:{'h' * 8}:ckpt-step-{10**7 - 1}"
    assert len(longest_checkpoint) <= bounds.MODEL
