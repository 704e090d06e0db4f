"""Uploaded files: rows in the ``files`` table, bytes in ``<data dir>/files/<file id>`` (the id is ours, so no
client-given name reaches the filesystem). Fine-tuning files are validated as JSONL on upload."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import select

from adapters.datasets import DatasetError, parse_jsonl
from gateway.db import Database, File
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.tenancy.service import utcnow

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


def file_object(row: File) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def _safe_filename(name: str) -> str:
    """Kept as metadata only; trimmed of any directory part and control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:256] or "upload"


class FileStore:
    def __init__(self, db: Database, root: Path) -> None:
        self._db = db
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, file_id: str) -> Path:
        if not file_id.startswith("file-") or not file_id[5:].isalnum():
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return self._root / file_id

    def create(self, tenant_id: str, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise InvalidRequestError(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        if purpose == "fine-tune":
            if not filename.lower().endswith(".jsonl"):
                raise InvalidRequestError("Fine-tuning files must be .jsonl files.", param="file")
            try:
                parse_jsonl(data)
            except DatasetError as exc:
                raise InvalidRequestError(
                    f"Invalid file format: {exc}", param="file", code="invalid_file_format"
                ) from exc
        file_id = f"file-{secrets.token_hex(12)}"
        path = self._path(file_id)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        row = File(
            id=file_id,
            tenant_id=tenant_id,
            filename=_safe_filename(filename),
            purpose=purpose,
            bytes=len(data),
            created_at=utcnow(),
        )
        try:
            with self._db.session() as session:
                session.add(row)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        return file_object(row)

    def _own(self, tenant_id: str, file_id: str) -> File:
        with self._db.session() as session:
            row = session.get(File, file_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return row

    def get(self, tenant_id: str, file_id: str) -> dict[str, Any]:
        return file_object(self._own(tenant_id, file_id))

    def content(self, tenant_id: str, file_id: str) -> bytes:
        self._own(tenant_id, file_id)
        return self._path(file_id).read_bytes()

    def read(self, tenant_id: str, file_id: str) -> bytes | None:
        """The bytes of the tenant's file, or None (missing, deleted, or someone else's)."""
        try:
            return self.content(tenant_id, file_id)
        except (NotFoundError, FileNotFoundError):
            return None

    def purpose_of(self, tenant_id: str, file_id: str) -> str:
        return self._own(tenant_id, file_id).purpose

    def list(self, tenant_id: str, purpose: str | None, limit: int, order: str, after: str | None) -> dict[str, Any]:
        with self._db.session() as session:
            query = select(File).where(File.tenant_id == tenant_id)
            if purpose:
                query = query.where(File.purpose == purpose)
            descending = order == "desc"
            if after:
                cursor = session.get(File, after)
                if cursor is None or cursor.tenant_id != tenant_id:
                    raise NotFoundError(f"No such File object: {after}", param="after")
                key = (File.created_at, File.id)
                if descending:
                    query = query.where(
                        (key[0] < cursor.created_at) | ((key[0] == cursor.created_at) & (key[1] < cursor.id))
                    )
                else:
                    query = query.where(
                        (key[0] > cursor.created_at) | ((key[0] == cursor.created_at) & (key[1] > cursor.id))
                    )
            ordering = (File.created_at.desc(), File.id.desc()) if descending else (File.created_at, File.id)
            rows = list(session.scalars(query.order_by(*ordering).limit(limit + 1)))
        data = [file_object(row) for row in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }

    def delete(self, tenant_id: str, file_id: str) -> dict[str, Any]:
        row = self._own(tenant_id, file_id)
        with self._db.session() as session:
            session.delete(session.get(File, row.id))
        self._path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}
