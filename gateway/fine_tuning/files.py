"""Uploaded files: rows in the ``files`` table, bytes in ``<data dir>/files/<file id>`` (the id is ours, so no
client-given name reaches the filesystem).

Everything here is blocking I/O, meant for a worker thread: an upload is copied to disk in chunks with its size
limit enforced while copying (a fine-tuning file is then checked line by line), so no file is ever held in
memory whole; the tenant's storage quota is checked in the same transaction that adds the row."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from adapters.datasets import DatasetError, check_jsonl
from adapters.pagination import keyset_page
from gateway import audit, bounds
from gateway.clock import utcnow
from gateway.db import Database, File, StoredCompletion, affected_rows
from gateway.errors import InvalidRequestError, NotFoundError, PayloadTooLarge, QuotaExceeded
from gateway.fine_tuning.schemas import FileDeleted, FileList, FileOut
from gateway.private_files import open_private, private_dir
from gateway.tenancy.service import lock_live_tenant

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_CHUNK = 1024 * 1024
ORPHAN_AGE_SECONDS = 600.0
_SWEEP_BATCH = 500


def clean_filename(name: str) -> str:
    """Kept as metadata only: any directory part and control characters dropped; too long a name is a 400."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable()) or "upload"
    if len(cleaned) > bounds.FILENAME:
        raise InvalidRequestError(f"The file name must be at most {bounds.FILENAME} characters.", param="file")
    return cleaned


class FileStore:
    def __init__(self, db: Database, root: Path) -> None:
        self._db = db
        self._root = private_dir(root)

    def path_of(self, file_id: str) -> Path:
        """Where the file's bytes lie (a malformed id is refused first)."""
        if not file_id.startswith("file-") or not file_id[5:].isalnum() or len(file_id) > 40:
            raise NotFoundError(f"No such File object: {file_id[:40]}", param="file_id")
        return self._root / file_id

    # -- storage quota ---------------------------------------------------------------------------------------------
    def _used_bytes(self, session: Any, tenant_id: str) -> int:
        """What the tenant's storage quota counts: its files and its stored chat completions."""
        files = select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
        completions = select(func.coalesce(func.sum(StoredCompletion.bytes), 0)).where(
            StoredCompletion.tenant_id == tenant_id
        )
        return int(session.scalar(files) or 0) + int(session.scalar(completions) or 0)

    def used_bytes(self, tenant_id: str) -> int:
        with self._db.sessions() as session:
            return self._used_bytes(session, tenant_id)

    def check_room(self, tenant_id: str, quota: int, incoming: int) -> None:
        """Refuse an upload that cannot fit before its body is read (``incoming``: its Content-Length)."""
        with self._db.session() as session:
            used = self._used_bytes(session, tenant_id)
        _check_quota(used, incoming, quota)

    # -- create ----------------------------------------------------------------------------------------------------
    def create(
        self, tenant_id: str, filename: str, purpose: str, source: BinaryIO, *, max_bytes: int, quota: int
    ) -> FileOut:
        if purpose not in PURPOSES:
            raise InvalidRequestError(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        name = clean_filename(filename)
        if purpose == "fine-tune" and not name.lower().endswith(".jsonl"):
            raise InvalidRequestError("Fine-tuning files must be .jsonl files.", param="file")
        file_id = f"file-{secrets.token_hex(12)}"
        path = self.path_of(file_id)
        staging = path.with_suffix(".part")
        try:
            size = _copy(source, staging, max_bytes)
            if purpose == "fine-tune":
                with staging.open("rb") as handle:
                    try:
                        check_jsonl(handle)
                    except DatasetError as exc:
                        raise InvalidRequestError(
                            f"Invalid file format: {exc}", param="file", code="invalid_file_format"
                        ) from exc
            row = File(id=file_id, tenant_id=tenant_id, filename=name, purpose=purpose, bytes=size, created_at=utcnow())
            # One upload at a time per tenant gets to compare against the quota (the tenant's row lock).
            self._commit(row, staging, lambda session: _check_quota(self._used_bytes(session, tenant_id), size, quota))
        finally:
            staging.unlink(missing_ok=True)
        return FileOut.model_validate(row)

    def _commit(self, row: File, staging: Path, check: Callable[[Session], None] = lambda _: None) -> None:
        """Add the row (the tenant locked, ``check`` passed) and place its bytes from ``staging``, in one
        transaction: placed before the commit, so a row never names missing bytes, and removed if the commit
        fails (e.g. the tenant was deleted meanwhile), so no bytes are orphaned."""
        path = self.path_of(row.id)
        try:
            with self._db.session() as session:
                lock_live_tenant(session, row.tenant_id, "file")
                check(session)
                session.add(row)
                session.flush()
                os.replace(staging, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def add_generated(self, tenant_id: str, filename: str, purpose: str, lines: Iterable[bytes]) -> str:
        """A file the server made for the tenant (a batch's ``batch_output``): its id. Not refused by the storage
        quota (it answers what the tenant asked for), but counted in it afterwards, and deleted like any file."""
        file_id = f"file-{secrets.token_hex(12)}"
        path = self.path_of(file_id)
        staging = path.with_suffix(".part")
        try:
            with os.fdopen(open_private(staging), "wb") as out:
                for line in lines:
                    out.write(line)
                size = out.tell()
            row = File(
                id=file_id, tenant_id=tenant_id, filename=filename, purpose=purpose, bytes=size, created_at=utcnow()
            )
            self._commit(row, staging)
        finally:
            staging.unlink(missing_ok=True)
        return file_id

    # -- read ------------------------------------------------------------------------------------------------------
    def _own(self, tenant_id: str, file_id: str) -> File:
        self.path_of(file_id)  # refuses malformed ids before any query
        with self._db.session() as session:
            row = session.get(File, file_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return row

    def get(self, tenant_id: str, file_id: str) -> FileOut:
        return FileOut.model_validate(self._own(tenant_id, file_id))

    def open(self, tenant_id: str, file_id: str) -> tuple[BinaryIO, int]:
        """The file's bytes as an open handle (still readable if the file is deleted meanwhile) and its size."""
        self._own(tenant_id, file_id)
        try:
            handle = self.path_of(file_id).open("rb")
            return handle, os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id") from None

    def purpose_of(self, tenant_id: str, file_id: str) -> str:
        return self._own(tenant_id, file_id).purpose

    def read(self, tenant_id: str, file_id: str) -> bytes | None:
        """The bytes of the tenant's file, or None (missing, deleted, or someone else's): the worker's reader."""
        try:
            self._own(tenant_id, file_id)
            return self.path_of(file_id).read_bytes()
        except (NotFoundError, FileNotFoundError):
            return None

    def list(self, tenant_id: str, purpose: str | None, limit: int, order: str, after: str | None) -> FileList:
        with self._db.session() as session:
            query = select(File).where(File.tenant_id == tenant_id)
            if purpose:
                query = query.where(File.purpose == purpose)
            cursor = None
            if after:
                row = session.get(File, after)
                if row is None or row.tenant_id != tenant_id:
                    raise NotFoundError(f"No such File object: {after}", param="after")
                cursor = (row.created_at, row.id)
            keys = (File.created_at, File.id)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=order == "desc")
        return FileList.of([FileOut.model_validate(row) for row in rows], more)

    def delete(self, tenant_id: str, file_id: str, actor: audit.Actor) -> FileDeleted:
        """The row (with its audit entry), then the bytes."""
        self.path_of(file_id)
        with self._db.session() as session:
            deleted = session.execute(delete(File).where(File.id == file_id, File.tenant_id == tenant_id))
            if not affected_rows(deleted):
                raise NotFoundError(f"No such File object: {file_id}", param="file_id")
            audit.record(session, actor, "file.delete", "file", file_id, tenant_id)
        self.remove_bytes([file_id])
        return FileDeleted(id=file_id)

    def remove_files(self, file_ids: Iterable[str]) -> None:
        """Remove files the server made (rows and bytes) that turned out not to be needed."""
        ids = list(file_ids)
        with self._db.session() as session:
            session.execute(delete(File).where(File.id.in_(ids)))
        self.remove_bytes(ids)

    def remove_bytes(self, file_ids: Iterable[str]) -> None:
        """Remove the bytes of files whose rows are gone."""
        for file_id in file_ids:
            self.path_of(file_id).unlink(missing_ok=True)

    def sweep_orphans(self, older_than_seconds: float = ORPHAN_AGE_SECONDS) -> int:
        """Remove bytes that no row names (a process killed between placing an upload's bytes and its commit, or
        before it removed a deleted file's bytes) and staging leftovers, once older than ``older_than_seconds``
        (an upload in flight places its bytes moments before its commit). How many files went."""
        cutoff = time.time() - older_than_seconds
        stale = [path for path in self._root.iterdir() if path.is_file() and path.stat().st_mtime < cutoff]
        removed = 0
        for start in range(0, len(stale), _SWEEP_BATCH):
            paths = {path.name.removesuffix(".part"): path for path in stale[start : start + _SWEEP_BATCH]}
            with self._db.session() as session:
                named = set(session.scalars(select(File.id).where(File.id.in_(list(paths)))))
            for file_id, path in paths.items():
                if file_id not in named or path.suffix == ".part":
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


def _copy(source: BinaryIO, target: Path, max_bytes: int) -> int:
    size = 0
    with os.fdopen(open_private(target), "wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(
                    f"The file is larger than this server's limit of {max_bytes} bytes.",
                    param="file",
                    code="file_too_large",
                )
            out.write(chunk)
    return size


def _check_quota(used: int, incoming: int, quota: int) -> None:
    if used + incoming > quota:
        raise QuotaExceeded(
            f"This upload needs {incoming} bytes but your organization's files already take {used} of its "
            f"{quota}-byte storage quota. Delete files or ask your operator for more.",
            param="file",
        )
