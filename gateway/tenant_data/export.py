"""A tenant's data as one ``tar.gz`` archive, for the operator to hand over (or keep) before deleting it.

The archive holds ``tenant.json``; ``keys.jsonl`` (metadata: no hash, no secret); ``files.jsonl`` and each uploaded
file's bytes under ``files/<id>``; ``fine_tuning/{jobs,events,checkpoints}.jsonl``; ``adapters.jsonl`` and each
trained adapter's dir (with its checkpoints) under ``adapters/<job id>/``; ``evals/{evals,runs,items}.jsonl``;
``batches/{batches,requests}.jsonl``; ``responses/{responses,input_items}.jsonl`` (stored responses of
``/v1/responses``); ``chat_completions.jsonl`` (completions stored with ``store: true``);
``webhooks/{endpoints,deliveries}.jsonl`` (no secret); ``aliases/{aliases,versions}.jsonl`` (model aliases and
their versions); ``usage/{records,daily}.jsonl``. Each ``.jsonl`` line is one database row.

It is written by a worker thread in bounded memory: rows are read in batches into temp files that spill to
disk past a few MiB, file bytes stream from disk, and the compressed archive goes to the client through a short
queue (a slow or departed client stops the thread, it does not grow a buffer)."""

from __future__ import annotations

import io
import json
import queue
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.registry import AdapterRegistry
from adapters.store import Adapter, FineTuningJob, JobCheckpoint, JobEvent
from gateway import audit
from gateway.db import (
    ApiKey,
    Batch,
    BatchRequest,
    Database,
    Eval,
    EvalRun,
    EvalRunItem,
    File,
    ModelAlias,
    ModelAliasVersion,
    ResponseInputItem,
    StoredCompletion,
    StoredResponse,
    Tenant,
    UsageDaily,
    UsageRecord,
)
from gateway.fine_tuning.files import FileStore
from gateway.tenancy.service import TenancyService, tenant_out
from gateway.webhooks.service import webhook_tables

_BATCH = 500
_SPILL_BYTES = 4 * 1024 * 1024
_CHUNK = 256 * 1024
_QUEUED_CHUNKS = 16
_SECRET_COLUMNS = {"key_hash", "secret", "previous_secret"}


class _Stopped(Exception):
    """The client went away: the archive is abandoned."""


class TenantExport:
    def __init__(self, db: Database, files: FileStore, registry: AdapterRegistry) -> None:
        self._db = db
        self._files = files
        self._registry = registry

    def begin(self, ref: str, actor: audit.Actor) -> tuple[str, str]:
        """The tenant's id and name (by name or id), with the export's audit entry."""
        with self._db.session() as session:
            tenant = TenancyService._find(session, ref)
            audit.record(session, actor, "tenant.export", "tenant", tenant.id, tenant.id, {"name": tenant.name})
            return tenant.id, tenant.name

    def write(self, tenant_id: str, out: BinaryIO) -> None:
        """Blocking: the whole archive into ``out``."""
        with self._db.sessions() as session, tarfile.open(fileobj=out, mode="w|gz", bufsize=_CHUNK) as archive:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                return
            _add_bytes(archive, "tenant.json", json.dumps(tenant_out(tenant).model_dump(mode="json"), indent=2))
            jobs = select(FineTuningJob.id).where(FineTuningJob.tenant_id == tenant_id).scalar_subquery()
            runs = select(EvalRun.id).where(EvalRun.tenant_id == tenant_id).scalar_subquery()
            batches = select(Batch.id).where(Batch.tenant_id == tenant_id).scalar_subquery()
            responses = select(StoredResponse.id).where(StoredResponse.tenant_id == tenant_id).scalar_subquery()
            tables: list[tuple[str, Any]] = [
                ("keys.jsonl", select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.id)),
                ("files.jsonl", select(File).where(File.tenant_id == tenant_id).order_by(File.id)),
                ("fine_tuning/jobs.jsonl", select(FineTuningJob).where(FineTuningJob.tenant_id == tenant_id)),
                ("fine_tuning/events.jsonl", select(JobEvent).where(JobEvent.job_id.in_(jobs)).order_by(JobEvent.id)),
                ("fine_tuning/checkpoints.jsonl", select(JobCheckpoint).where(JobCheckpoint.job_id.in_(jobs))),
                ("adapters.jsonl", select(Adapter).where(Adapter.tenant_id == tenant_id).order_by(Adapter.id)),
                ("evals/evals.jsonl", select(Eval).where(Eval.tenant_id == tenant_id).order_by(Eval.id)),
                ("evals/runs.jsonl", select(EvalRun).where(EvalRun.tenant_id == tenant_id).order_by(EvalRun.id)),
                (
                    "evals/items.jsonl",
                    select(EvalRunItem).where(EvalRunItem.run_id.in_(runs)).order_by(EvalRunItem.id),
                ),
                ("batches/batches.jsonl", select(Batch).where(Batch.tenant_id == tenant_id).order_by(Batch.id)),
                (
                    "batches/requests.jsonl",
                    select(BatchRequest).where(BatchRequest.batch_id.in_(batches)).order_by(BatchRequest.id),
                ),
                (
                    "responses/responses.jsonl",
                    select(StoredResponse).where(StoredResponse.tenant_id == tenant_id).order_by(StoredResponse.id),
                ),
                (
                    "responses/input_items.jsonl",
                    select(ResponseInputItem)
                    .where(ResponseInputItem.response_id.in_(responses))
                    .order_by(ResponseInputItem.id),
                ),
                *webhook_tables(tenant_id),
                (
                    "chat_completions.jsonl",
                    select(StoredCompletion)
                    .where(StoredCompletion.tenant_id == tenant_id)
                    .order_by(StoredCompletion.id),
                ),
                (
                    "aliases/aliases.jsonl",
                    select(ModelAlias).where(ModelAlias.tenant_id == tenant_id).order_by(ModelAlias.id),
                ),
                (
                    "aliases/versions.jsonl",
                    select(ModelAliasVersion)
                    .where(ModelAliasVersion.tenant_id == tenant_id)
                    .order_by(ModelAliasVersion.id),
                ),
                (
                    "usage/records.jsonl",
                    select(UsageRecord).where(UsageRecord.tenant_id == tenant_id).order_by(UsageRecord.id),
                ),
                ("usage/daily.jsonl", select(UsageDaily).where(UsageDaily.tenant_id == tenant_id)),
            ]
            for name, query in tables:
                _add_rows(archive, name, session, query)
            for file_id in session.scalars(select(File.id).where(File.tenant_id == tenant_id).order_by(File.id)):
                _add_path(archive, self._files.path_of(file_id), f"files/{file_id}")
            job_ids = session.scalars(select(Adapter.job_id).where(Adapter.tenant_id == tenant_id).distinct())
            for job_id in sorted(set(job_ids)):
                _add_path(archive, self._registry.job_dir(job_id), f"adapters/{job_id}")

    async def stream(self, tenant_id: str) -> AsyncIterator[bytes]:
        """The archive's bytes as a worker thread writes them, a few chunks ahead of the client at most."""
        chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)
        stopped = threading.Event()

        def produce() -> None:
            writer = _QueueWriter(chunks, stopped)
            try:
                self.write(tenant_id, writer)  # type: ignore[arg-type]
                writer.put(None)
            except _Stopped:
                return
            except BaseException as exc:  # handed to the response, which ends the stream
                try:
                    writer.put(exc)
                except _Stopped:
                    return

        threading.Thread(target=produce, name="llmaas-export", daemon=True).start()
        try:
            while True:
                item = await run_in_threadpool(_take, chunks, stopped)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopped.set()


class _QueueWriter(io.RawIOBase):
    def __init__(self, chunks: queue.Queue[bytes | BaseException | None], stopped: threading.Event) -> None:
        self._chunks = chunks
        self._stopped = stopped

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.put(chunk)
        return len(chunk)

    def put(self, item: bytes | BaseException | None) -> None:
        while not self._stopped.is_set():
            try:
                self._chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Stopped


def _take(chunks: queue.Queue[bytes | BaseException | None], stopped: threading.Event) -> bytes | BaseException | None:
    while True:
        try:
            return chunks.get(timeout=0.5)
        except queue.Empty:
            if stopped.is_set():
                return None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def _row(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs if c.key not in _SECRET_COLUMNS}


def _add_rows(archive: tarfile.TarFile, name: str, session: Session, query: Any) -> None:
    """One JSON line per row, spooled to a temp file (disk past a few MiB) so that its size is known."""
    with tempfile.SpooledTemporaryFile(max_size=_SPILL_BYTES) as spool:
        for row in session.scalars(query.execution_options(yield_per=_BATCH)):
            spool.write(json.dumps(_row(row), default=_json_default, ensure_ascii=False).encode() + b"\n")
        info = tarfile.TarInfo(name)
        info.size = spool.tell()
        spool.seek(0)
        archive.addfile(info, spool)


def _add_bytes(archive: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _add_path(archive: tarfile.TarFile, path: Path, name: str) -> None:
    """A file or a directory tree from disk (gone meanwhile: skipped)."""
    try:
        archive.add(path, arcname=name, filter=_no_owner)
    except FileNotFoundError:
        return


def _no_owner(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if not (info.isfile() or info.isdir()):
        return None  # no links or devices
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def archive_name(tenant_name: str, now: datetime) -> str:
    return f"llmaas-{tenant_name}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"
