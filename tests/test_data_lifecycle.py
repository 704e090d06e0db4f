"""Deleted means deleted, and private means private, on both databases: a tenant's deletion removes its rows and
bytes (files, jobs with their events and checkpoints, adapters and their weights, evals with runs and items,
console sessions, keys) and keeps its usage and audit entries; a running job of a deleted tenant stops and
leaves nothing; file, model and eval deletes remove their content; retention purges old uploads and eval items;
the export archive holds the tenant's data (no key hash); the audit log records and pages; data files are 0600
and directories 0700."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import tarfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select, text

from adapters import worker as worker_module
from adapters.jobs import JobService
from adapters.registry import AdapterRegistry, checkpoint_name
from adapters.store import Adapter, FineTuningJob, JobCheckpoint, JobEvent
from adapters.training import Checkpoint, StepMetrics, TrainingCancelled
from adapters.worker import Worker
from gateway.accounting.ledger import LedgerWriter
from gateway.accounting.pricing import PriceBook
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.accounting.training_billing import job_charger
from gateway.audit import SYSTEM_ACTOR, Actor
from gateway.audit_log import AuditFilters, AuditLog
from gateway.clock import utcnow
from gateway.db import (
    ApiKey,
    AuditEntry,
    ConsoleSession,
    Database,
    Eval,
    EvalRun,
    EvalRunItem,
    File,
    Tenant,
    UsageDaily,
    UsageRecord,
)
from gateway.errors import ModelNotFound, NotFoundError
from gateway.evals.models import EvalCreate
from gateway.evals.service import EvalService
from gateway.fine_tuning.files import FileStore
from gateway.inference.catalog import ModelCatalog
from gateway.retention import Retention
from gateway.tenancy.models import KeyCreate, TenantCreate, TenantUpdate
from gateway.tenancy.service import TenancyService
from gateway.tenant_data.erasure import TenantEraser
from gateway.tenant_data.export import TenantExport
from tests.test_worker import SlowTrainingWorker, job_request

AnyWorker = TypeVar("AnyWorker", bound=Worker)
OPERATOR = Actor("operator", request_id="req-1", client_address="127.0.0.1")
TRAINING = b'{"messages": [{"role": "user", "content": "secret question"}, {"role": "assistant", "content": "a"}]}\n'


class Stores:
    def __init__(self, database: Database, root: Path) -> None:
        self.db = database
        self.tenancy = TenancyService(database)
        self.files = FileStore(database, root / "files")
        self.registry = AdapterRegistry(database.sessions, root / "adapters")
        self.jobs = JobService(database.sessions, on_final=job_charger(PriceBook({})))
        self.eraser = TenantEraser(database, self.files, self.registry, PriceBook({}))
        self.exports = TenantExport(database, self.files, self.registry)

    def upload(self, tenant_id: str, data: bytes = TRAINING, purpose: str = "fine-tune") -> str:
        return str(
            self.files.create(tenant_id, "train.jsonl", purpose, io.BytesIO(data), max_bytes=10**8, quota=10**9).id
        )

    def trained_model(self, tenant_id: str, status: str = "succeeded") -> tuple[str, str]:
        """A job (with an event and a checkpoint) and, when succeeded, its registered adapter with a checkpoint."""
        job_id = self.jobs.create(job_request(tenant_id=tenant_id)).id
        job_dir = self.registry.job_dir(job_id)
        (job_dir / "adapter").mkdir(parents=True)
        (job_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
        (job_dir / "checkpoints" / "step-1").mkdir(parents=True)
        name = f"ft:base:acme::{job_id[6:14]}"
        with self.db.sessions.begin() as session:
            job = session.get(FineTuningJob, job_id)
            assert job is not None
            job.status, job.fine_tuned_model = status, name
            session.add(
                JobCheckpoint(
                    id=f"ftckpt_{job_id}",
                    job_id=job_id,
                    step_number=1,
                    metrics={},
                    fine_tuned_model_checkpoint=checkpoint_name(name, 1),
                    created_at=utcnow(),
                )
            )
            if status == "succeeded":
                self.registry.register(
                    session,
                    name=name,
                    tenant_id=tenant_id,
                    base_model="base",
                    job_id=job_id,
                    adapter_dir=job_dir / "adapter",
                )
                self.registry.register(
                    session,
                    name=checkpoint_name(name, 1),
                    tenant_id=tenant_id,
                    base_model="base",
                    job_id=job_id,
                    adapter_dir=job_dir / "checkpoints/step-1",
                )
        return job_id, name

    def eval_with_items(self, tenant_id: str, finished_at: Any = None) -> tuple[str, str]:
        eval_id, run_id = f"eval_{os.urandom(6).hex()}", f"evalrun_{os.urandom(6).hex()}"
        now = utcnow()
        with self.db.session() as session:
            session.add(
                Eval(id=eval_id, tenant_id=tenant_id, name="e", item_schema={}, testing_criteria=[], created_at=now)
            )
            session.add(
                EvalRun(
                    id=run_id,
                    eval_id=eval_id,
                    tenant_id=tenant_id,
                    name="r",
                    model="m",
                    data_source={},
                    status="completed",
                    result_counts={"total": 2},
                    per_criteria=[],
                    usage={},
                    created_at=now,
                    finished_at=finished_at or now,
                )
            )
            session.flush()
            for position in range(2):
                session.add(
                    EvalRunItem(
                        run_id=run_id,
                        position=position,
                        item={"q": "private item"},
                        sample={"output_text": "private answer"},
                        results=[],
                        status="pass",
                        created_at=now,
                    )
                )
        return eval_id, run_id

    def worker(self, kind: type[AnyWorker], base_dir: Path, heartbeat_seconds: float) -> AnyWorker:
        """A worker of ``kind`` on these stores, training base model "base" (in ``base_dir``) on ``TRAINING``."""
        charge = job_charger(PriceBook({}))
        return kind(
            self.db.sessions,
            self.registry,
            lambda t, f: TRAINING,
            {"base": base_dir},
            charge,
            heartbeat_seconds=heartbeat_seconds,
        )

    def count(self, model: Any, *where: Any) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture
def stores(database: Database, tmp_path: Path) -> Stores:
    return Stores(database, tmp_path)


def usage(tenant_id: str, request_id: str) -> UsageEntry:
    return UsageEntry(request_id, tenant_id, None, "m", "inference", "ok", 5, 7, 0, utcnow())


def test_deleting_a_tenant_removes_its_content_and_keeps_its_usage(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    other = stores.tenancy.create_tenant(TenantCreate(name="other")).id
    key = stores.tenancy.create_key("acme", KeyCreate(name="k"))
    file_id, others_file = stores.upload(acme), stores.upload(other)
    job_id, _ = stores.trained_model(acme)
    queued_id = stores.jobs.create(job_request(tenant_id=acme)).id
    stores.eval_with_items(acme)
    others_eval, _ = stores.eval_with_items(other)
    with stores.db.session() as session:
        session.add(
            ConsoleSession(
                id="s" * 64,
                subject=key.id,
                tenant_id=acme,
                created_at=utcnow(),
                expires_at=utcnow() + timedelta(hours=1),
            )
        )
    UsageLedger(stores.db).write([usage(acme, "req-acme")])

    erased = stores.eraser.erase("acme", OPERATOR)

    assert erased.tenant_id == acme and len(erased.adapters) == 2
    for model, column in (
        (Tenant, Tenant.id),
        (ApiKey, ApiKey.tenant_id),
        (File, File.tenant_id),
        (Eval, Eval.tenant_id),
        (EvalRun, EvalRun.tenant_id),
        (FineTuningJob, FineTuningJob.tenant_id),
        (Adapter, Adapter.tenant_id),
        (ConsoleSession, ConsoleSession.tenant_id),
    ):
        assert stores.count(model, column == acme) == 0, model.__name__
    assert stores.count(JobEvent, JobEvent.job_id.in_([job_id, queued_id])) == 0
    assert stores.count(JobCheckpoint, JobCheckpoint.job_id == job_id) == 0
    assert stores.count(EvalRunItem) == 2  # the other tenant's
    assert not stores.files.path_of(file_id).exists()
    assert not stores.registry.job_dir(job_id).exists()
    # What accounting needs stays: the usage, the charge of the job it cancelled, the audit entry.
    assert stores.count(UsageRecord, UsageRecord.request_id == "req-acme") == 1
    assert stores.count(UsageRecord, UsageRecord.request_id == queued_id, UsageRecord.outcome == "cancelled") == 1
    assert stores.count(UsageDaily, UsageDaily.tenant_id == acme) >= 1
    entry = AuditLog(stores.db).page(AuditFilters(tenant=acme, action="tenant.delete")).data[0]
    assert (entry.actor, entry.request_id, entry.client_address) == ("operator", "req-1", "127.0.0.1")
    assert entry.details["files"] == 1 and entry.details["keys"] == 1
    # The other tenant is untouched.
    assert stores.files.path_of(others_file).exists()
    assert stores.files.get(other, others_file).id == others_file
    assert stores.count(Eval, Eval.id == others_eval) == 1
    with pytest.raises(NotFoundError):
        stores.eraser.erase("acme", OPERATOR)


def test_a_running_job_of_a_deleted_tenant_stops_and_leaves_nothing(stores: Stores, tmp_path: Path) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    job_id = stores.jobs.create(job_request(tenant_id=acme)).id
    worker = stores.worker(SlowTrainingWorker, tmp_path, heartbeat_seconds=0.1)
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    assert worker.training.wait(10)
    stores.eraser.erase("acme", SYSTEM_ACTOR)
    worker.release.set()  # training "finishes" after the deletion
    runner.join(10)
    assert stores.count(Adapter) == 0 and stores.count(FineTuningJob) == 0
    assert not stores.registry.job_dir(job_id).exists()
    assert stores.count(UsageRecord, UsageRecord.request_id == job_id, UsageRecord.outcome == "cancelled") == 1


def test_a_job_deleted_while_training_gets_no_more_progress_rows(
    stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's real progress callbacks, after its tenant's deletion: no event or checkpoint row appears."""
    deleted, resume = threading.Event(), threading.Event()

    def train_lora(spec: Any, on_metrics: Any, on_checkpoint: Any, should_stop: Any) -> Any:
        on_metrics(StepMetrics(1, 2, 1, 0.5, 0.5, None, trained_tokens=10))
        deleted.set()
        assert resume.wait(10)
        on_metrics(StepMetrics(2, 2, 1, 0.4, 0.6, None, trained_tokens=20))  # before its heartbeat noticed
        on_checkpoint(Checkpoint(2, spec.output_dir / "checkpoints" / "step-2", 0.4, None))
        raise TrainingCancelled("stopped", 20)

    monkeypatch.setattr(worker_module, "train_lora", train_lora)
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    job_id = stores.jobs.create(job_request(tenant_id=acme)).id
    worker = stores.worker(Worker, tmp_path, heartbeat_seconds=60)
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    assert deleted.wait(10)
    assert stores.count(JobEvent, JobEvent.job_id == job_id, JobEvent.type == "metrics") == 1
    stores.eraser.erase("acme", SYSTEM_ACTOR)
    resume.set()
    runner.join(10)
    assert stores.count(JobEvent, JobEvent.job_id == job_id) == 0
    assert stores.count(JobCheckpoint, JobCheckpoint.job_id == job_id) == 0
    assert stores.count(UsageRecord, UsageRecord.request_id == job_id) == 1  # charged once, at the deletion


async def test_deleting_a_model_or_a_checkpoint_removes_its_weights(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    job_id, name = stores.trained_model(acme)
    nothing_served = SimpleNamespace(models=dict)  # the base model is not even served right now
    catalog = ModelCatalog(nothing_served, stores.registry, aliases=None)  # type: ignore[arg-type]
    audited: list[str] = []
    await catalog.delete(checkpoint_name(name, 1), acme, lambda session, records: audited.append(records[0].name))
    assert audited == [checkpoint_name(name, 1)]
    assert not (stores.registry.job_dir(job_id) / "checkpoints" / "step-1").exists()
    assert (stores.registry.job_dir(job_id) / "adapter").exists()
    await catalog.delete(name, acme)
    assert not stores.registry.job_dir(job_id).exists()
    with pytest.raises(ModelNotFound):
        await catalog.delete(name, acme)


def test_deleting_a_file_or_an_eval_removes_its_content_and_is_audited(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    file_id = stores.upload(acme)
    with pytest.raises(NotFoundError):
        stores.files.delete("someone-else", file_id, OPERATOR)
    stores.files.delete(acme, file_id, Actor("key_1", acme))
    assert not stores.files.path_of(file_id).exists() and stores.count(File) == 0
    evals = EvalService(stores.db)
    eval_id, run_id = stores.eval_with_items(acme)
    evals.delete_run(acme, eval_id, run_id, Actor("key_1", acme))
    assert stores.count(EvalRunItem) == 0 and stores.count(EvalRun) == 0
    stores.eval_with_items(acme)
    other_eval, _ = stores.eval_with_items(acme)
    evals.delete(acme, other_eval, Actor("key_1", acme))
    assert stores.count(EvalRunItem) == 2 and stores.count(EvalRun) == 1 and stores.count(Eval) == 2
    actions = [e.action for e in AuditLog(stores.db).page(AuditFilters(actor="key_1")).data]
    assert actions == ["eval.delete", "eval_run.delete", "file.delete"]


def test_an_upload_or_an_eval_racing_the_deletion_of_its_tenant_is_refused(stores: Stores) -> None:
    with pytest.raises(NotFoundError):
        stores.upload("ten_gone")
    assert stores.count(File) == 0
    body = EvalCreate.model_validate(
        {
            "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
            "testing_criteria": [
                {"type": "string_check", "name": "eq", "input": "a", "reference": "a", "operation": "eq"}
            ],
        }
    )
    with pytest.raises(NotFoundError):  # its request was admitted before the deletion, its body came after
        EvalService(stores.db).create("ten_gone", body)
    assert stores.count(Eval) == 0


def test_retention_purges_old_uploads_and_eval_items_only(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    old_file, new_file = stores.upload(acme), stores.upload(acme)
    with stores.db.session() as session:
        session.get(File, old_file).created_at = utcnow() - timedelta(days=31)  # type: ignore[union-attr]
    _, old_run = stores.eval_with_items(acme, finished_at=utcnow() - timedelta(days=8))
    _, new_run = stores.eval_with_items(acme)
    nothing = {"files": 0, "eval_items": 0, "responses": 0, "chat_completions": 0, "orphaned_files": 0}
    assert Retention(stores.db, stores.files, files_days=None, eval_items_days=None).purge_once() == nothing
    retention = Retention(stores.db, stores.files, files_days=30, eval_items_days=7)
    assert retention.purge_once() == nothing | {"files": 1, "eval_items": 2}
    # idempotent: a second gateway finds nothing
    assert retention.purge_once() == nothing
    assert not stores.files.path_of(old_file).exists() and stores.files.path_of(new_file).exists()
    assert stores.count(EvalRunItem, EvalRunItem.run_id == old_run) == 0
    assert stores.count(EvalRunItem, EvalRunItem.run_id == new_run) == 2
    assert stores.count(EvalRun, EvalRun.id == old_run) == 1  # the run and its counts stay
    entries = AuditLog(stores.db).page(AuditFilters(action="retention.")).data
    assert sorted(e.target_type for e in entries) == ["eval_item", "file"]
    assert {e.actor for e in entries} == {"system"}


def test_bytes_no_row_names_are_swept_once_old(stores: Stores) -> None:
    """A process killed between placing an upload's bytes and its commit (or before removing a deleted file's
    bytes) leaves bytes no row names: the retention pass removes them once they are ten minutes old."""
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    kept = stores.upload(acme)
    orphan, staging, young = (stores.files.path_of(f"file-{n}abc") for n in range(3))
    staging = staging.with_suffix(".part")
    for path in (orphan, staging, young):
        path.write_bytes(b"left behind")
    an_hour_ago = time.time() - 3600
    for path in (orphan, staging, stores.files.path_of(kept)):
        os.utime(path, (an_hour_ago, an_hour_ago))
    purged = Retention(stores.db, stores.files, files_days=None, eval_items_days=None).purge_once()
    assert purged["orphaned_files"] == 2
    assert not orphan.exists() and not staging.exists()
    assert young.exists() and stores.files.path_of(kept).exists()  # too young to judge; named by its row


def test_the_export_holds_the_tenants_data_and_no_secret(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    key = stores.tenancy.create_key("acme", KeyCreate(name="k"))
    other = stores.tenancy.create_tenant(TenantCreate(name="other")).id
    file_id = stores.upload(acme)
    stores.upload(other, b'{"prompt": "other", "completion": "x"}\n')
    job_id, name = stores.trained_model(acme)
    stores.eval_with_items(acme)
    UsageLedger(stores.db).write([usage(acme, "req-1"), usage(other, "req-2")])
    tenant_id, tenant_name = stores.exports.begin("acme", OPERATOR)
    out = io.BytesIO()
    stores.exports.write(tenant_id, out)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as archive:
        members = {m.name: m for m in archive.getmembers()}

        def lines(member: str) -> list[dict[str, Any]]:
            return [json.loads(line) for line in archive.extractfile(members[member]).read().splitlines()]  # type: ignore[union-attr]

        assert json.loads(archive.extractfile(members["tenant.json"]).read())["name"] == "acme"  # type: ignore[union-attr]
        assert archive.extractfile(members[f"files/{file_id}"]).read() == TRAINING  # type: ignore[union-attr]
        keys = lines("keys.jsonl")
        assert [k["id"] for k in keys] == [key.id] and "key_hash" not in keys[0]
        assert [f["id"] for f in lines("files.jsonl")] == [file_id]
        assert [j["id"] for j in lines("fine_tuning/jobs.jsonl")] == [job_id]
        assert lines("fine_tuning/events.jsonl")[0]["job_id"] == job_id
        assert sorted(a["name"] for a in lines("adapters.jsonl")) == [name, checkpoint_name(name, 1)]
        assert members[f"adapters/{job_id}/adapter/adapter_model.safetensors"].size == len(b"weights")
        assert [i["item"] for i in lines("evals/items.jsonl")] == [{"q": "private item"}] * 2
        assert [r["request_id"] for r in lines("usage/records.jsonl")] == ["req-1"]
        assert len(lines("usage/daily.jsonl")) == 1
        assert not any("other" in n for n in members)
    assert (tenant_name, stores.count(AuditEntry, AuditEntry.action == "tenant.export")) == ("acme", 1)


async def test_the_export_streams_and_stops_when_its_reader_leaves(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
    stores.upload(acme, os.urandom(3 * 1024 * 1024), purpose="user_data")  # incompressible: many chunks
    whole = b"".join([chunk async for chunk in stores.exports.stream(acme)])
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:gz") as archive:
        assert any(name.startswith("files/") for name in archive.getnames())
    stream = stores.exports.stream(acme)
    first = await stream.__anext__()
    assert first
    await stream.aclose()  # the reader left: the writing thread stops instead of filling memory
    deadline = 50
    while any(t.name == "llmaas-export" for t in threading.enumerate()) and deadline:
        await asyncio.sleep(0.1)
        deadline -= 1
    assert not any(t.name == "llmaas-export" for t in threading.enumerate())


def test_tenant_changes_are_audited_and_the_log_pages_and_filters(stores: Stores) -> None:
    acme = stores.tenancy.create_tenant(TenantCreate(name="acme"), OPERATOR).id
    stores.tenancy.update_tenant("acme", TenantUpdate(requests_per_minute=5), OPERATOR)
    stores.tenancy.update_tenant("acme", TenantUpdate(status="suspended"), OPERATOR)
    stores.tenancy.update_tenant("acme", TenantUpdate(status="active"), OPERATOR)
    stores.tenancy.create_tenant(TenantCreate(name="other"))
    stores.eraser.erase("acme", OPERATOR)
    log = AuditLog(stores.db)
    by_acme = log.page(AuditFilters(tenant=acme)).data  # deleted: found by its id
    assert [e.action for e in by_acme] == [
        "tenant.delete",
        "tenant.resume",
        "tenant.suspend",
        "tenant.update",
        "tenant.create",
    ]
    assert by_acme[3].details == {"fields": ["requests_per_minute"]}
    assert log.page(AuditFilters(tenant="other")).data[0].action == "tenant.create"  # by name
    first = log.page(AuditFilters(limit=2))
    assert first.has_more and len(first.data) == 2
    rest = log.page(AuditFilters(limit=10, after=first.last_id))
    assert not rest.has_more
    assert [e.id for e in first.data + rest.data] == sorted((e.id for e in first.data + rest.data), reverse=True)
    assert len(first.data + rest.data) == 6
    assert log.page(AuditFilters(actor="system")).data[0].action == "tenant.create"
    assert log.page(AuditFilters(since=utcnow() + timedelta(minutes=1))).data == []
    assert len(log.page(AuditFilters(until=utcnow() + timedelta(minutes=1))).data) == 6


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_files_and_directories_are_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # as a careless environment would leave it
    try:
        data = tmp_path / "data"
        from gateway.bootstrap import open_database
        from gateway.settings import GatewaySettings

        database = open_database(GatewaySettings(data_dir=data))
        stores = Stores(database, data)
        acme = stores.tenancy.create_tenant(TenantCreate(name="acme")).id
        file_id = stores.upload(acme)
        with database.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        ledger = LedgerWriter(lambda entries: None, data / "ledger", shutdown_seconds=0)
        ledger.claim()
        ledger.record(usage(acme, "r"))
        ledger.close()  # nothing is written to the database in 0 s: the record stays in the journal
        spooled = list((data / "ledger").glob("journal-*"))
        assert spooled
        for directory in (data, data / "files", data / "ledger"):
            assert mode(directory) == 0o700, directory
        for path in (
            data / "llmaas.db",
            data / "llmaas.db-wal",
            data / "llmaas.db-shm",
            stores.files.path_of(file_id),
            *spooled,
        ):
            assert mode(path) == 0o600, path
        database.dispose()
        os.chmod(data / "llmaas.db", 0o644)  # an older install's database is made private at the next start
        open_database(GatewaySettings(data_dir=data)).dispose()
        assert mode(data / "llmaas.db") == 0o600
    finally:
        os.umask(previous)
