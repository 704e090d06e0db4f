"""Stored chat completions in the database, per tenant: what ``store: true`` keeps (the request that shaped the
completion and the completion as answered, with its ``metadata``), the checks before the model runs (the tenant may
store, and its storage quota has room), the list with its filters (keyset-paged on creation time), a completion's
messages, the metadata update, deletion, and the purges of retention and tenant erasure.

A completion's bytes (its request's and its answer's JSON) count in the tenant's storage quota beside its files
(``FileStore.used_bytes``). The request's bytes must fit before the model runs; the answer is then stored whatever
its length (it answers what the tenant asked for, as a batch's output file is), so a tenant may pass its quota by
at most one answer, and its next ``store: true`` is refused. A completion of another tenant is never found."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, delete, select
from sqlalchemy.orm import Session

from adapters.pagination import keyset_page
from gateway.clock import utcnow
from gateway.db import Database, StoredCompletion, affected_rows
from gateway.errors import InvalidRequestError, NotFoundError, QuotaExceeded
from gateway.fine_tuning.files import FileStore
from gateway.inference.api_types import ChatCompletionRequest
from gateway.stored_completions.objects import (
    CompletionDeleted,
    StoredChatCompletion,
    StoredCompletionList,
    StoredMessage,
    StoredMessageList,
)
from gateway.tenancy.principal import TenantPrincipal
from gateway.tenancy.service import lock_live_tenant

_BATCH = 500
_READ_BATCH = 32
"""Stored completions read into memory at a time (each may hold a request of up to the 2 MiB body cap)."""
_NOT_KEPT = {"stream", "stream_options", "store", "metadata"}
"""Request fields that shape how the answer travelled or is filed, not the answer: not kept in ``request``."""


@dataclass(frozen=True)
class Selection:
    """Which of a tenant's stored completions to read (exports, eval runs): all of the given conditions."""

    model: str | None = None
    metadata: dict[str, str] | None = None
    ids: list[str] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = 1000


@dataclass(frozen=True)
class Kept:
    """One stored completion as exports and eval runs read it."""

    id: str
    request: dict[str, Any]
    completion: dict[str, Any]
    metadata: dict[str, str] | None


def kept_request(body: ChatCompletionRequest) -> dict[str, Any]:
    """What is kept of a request: the fields it set, less those that only say how to deliver or file it."""
    return body.model_dump(mode="json", exclude_unset=True, exclude_none=True, exclude=_NOT_KEPT)


def _size(*parts: Any) -> int:
    return sum(len(json.dumps(part, ensure_ascii=False).encode()) for part in parts)


class CompletionStore:
    def __init__(self, db: Database, files: FileStore, default_quota: int) -> None:
        self._db = db
        self._files = files
        self._default_quota = default_quota

    def quota_of(self, tenant: TenantPrincipal) -> int:
        quota = tenant.identity.quotas.max_storage_bytes
        return self._default_quota if quota is None else quota

    def admit(self, tenant: TenantPrincipal, body: ChatCompletionRequest) -> None:
        """Blocking: may this request be stored? Refused before the model runs: a tenant whose operator forbids
        storing (400), or one whose storage quota has no room for the request (429)."""
        if not tenant.identity.quotas.store_completions:
            raise InvalidRequestError(
                "Storing chat completions is turned off for this organization; send store: false (or leave it out).",
                param="store",
                code="store_disabled",
            )
        self.check_room(tenant, _size(kept_request(body), body.metadata), "store")

    def check_room(self, tenant: TenantPrincipal, incoming: int, param: str) -> None:
        quota = self.quota_of(tenant)
        used = self._files.used_bytes(tenant.tenant_id)
        if used + incoming > quota:
            raise QuotaExceeded(
                f"This needs {incoming} bytes but your organization's files and stored completions already take "
                f"{used} of its {quota}-byte storage quota. Delete some or ask your operator for more.",
                param=param,
            )

    def save(
        self, tenant_id: str, request: dict[str, Any], completion: dict[str, Any], metadata: dict[str, str] | None
    ) -> None:
        """Blocking: one finished completion (the tenant locked: never stored for a tenant deleted meanwhile)."""
        with self._db.session() as session:
            lock_live_tenant(session, tenant_id, "store")
            session.add(
                StoredCompletion(
                    id=completion["id"],
                    tenant_id=tenant_id,
                    model=completion["model"],
                    request=request,
                    completion=completion,
                    user_metadata=metadata,
                    bytes=_size(request, completion, metadata),
                    created_at=utcnow(),  # finer than the answer's ``created`` seconds: the list's order
                )
            )

    # -- read ------------------------------------------------------------------------------------------------------
    def list(
        self,
        tenant_id: str,
        model: str | None,
        metadata: dict[str, str],
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> StoredCompletionList:
        with self._db.sessions() as session:
            cursor = None
            if after is not None:
                row = _owned(session, tenant_id, after, "after")
                cursor = (row.created_at, row.id)
            query = _selected(tenant_id, Selection(model=model, metadata=metadata))
            keys = (StoredCompletion.created_at, StoredCompletion.id)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=order == "desc")
            return StoredCompletionList.of([_completion(row) for row in rows], more)

    def get(self, tenant_id: str, completion_id: str) -> StoredChatCompletion:
        with self._db.sessions() as session:
            return _completion(_owned(session, tenant_id, completion_id))

    def messages(
        self, tenant_id: str, completion_id: str, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> StoredMessageList:
        with self._db.sessions() as session:
            request = _owned(session, tenant_id, completion_id).request
        messages = [_message(f"{completion_id}-{index}", sent) for index, sent in enumerate(request["messages"])]
        if order == "desc":
            messages.reverse()
        start = 0
        if after is not None:
            ids = [message.id for message in messages]
            if after not in ids:
                raise NotFoundError(f"No message with id '{after}' in completion '{completion_id}'.", param="after")
            start = ids.index(after) + 1
        page = messages[start : start + limit]
        return StoredMessageList.of(page, start + limit < len(messages))

    def select(self, tenant_id: str, selection: Selection) -> Iterator[Kept]:
        """Blocking: the selected completions, newest first, read a few at a time."""
        keys = (StoredCompletion.created_at, StoredCompletion.id)
        cursor = None
        left = selection.limit
        while left > 0:
            with self._db.sessions() as session:
                query = _selected(tenant_id, selection)
                rows, more = keyset_page(session, query, keys, cursor, min(left, _READ_BATCH), descending=True)
                kept = [Kept(row.id, row.request, row.completion, row.user_metadata) for row in rows]
                if rows:
                    left, cursor = left - len(rows), (rows[-1].created_at, rows[-1].id)
            yield from kept
            if not more or not rows:
                return

    def selected(self, tenant_id: str, selection: Selection) -> tuple[builtins.list[str], int]:
        """Blocking: the ids ``selection`` reads and the bytes they are stored in (an export is never larger),
        without reading the completions themselves."""
        columns = _selected(tenant_id, selection).with_only_columns(StoredCompletion.id, StoredCompletion.bytes)
        order = (StoredCompletion.created_at.desc(), StoredCompletion.id.desc())
        with self._db.sessions() as session:
            rows = session.execute(columns.order_by(*order).limit(selection.limit)).all()
        return [row.id for row in rows], sum(row.bytes for row in rows)

    # -- change ----------------------------------------------------------------------------------------------------
    def update(self, tenant_id: str, completion_id: str, metadata: dict[str, str] | None) -> StoredChatCompletion:
        with self._db.session() as session:
            row = _owned(session, tenant_id, completion_id)
            row.user_metadata = metadata
            row.bytes = _size(row.request, row.completion, metadata)
            session.flush()
            return _completion(row)

    def delete(self, tenant_id: str, completion_id: str) -> CompletionDeleted:
        with self._db.session() as session:
            gone = session.execute(
                delete(StoredCompletion).where(
                    StoredCompletion.id == completion_id, StoredCompletion.tenant_id == tenant_id
                )
            )
            if not affected_rows(gone):
                raise _not_found(completion_id)
        return CompletionDeleted(id=completion_id)


def purge_completions(db: Database, before: datetime) -> int:
    """Blocking: stored completions created before ``before``, in batches; how many went. Any number of gateways
    may run it at once (a row is deleted once)."""
    total = 0
    while True:
        with db.session() as session:
            old = select(StoredCompletion.id).where(StoredCompletion.created_at < before).limit(_BATCH)
            ids = list(session.scalars(old))
            if not ids:
                return total
            total += affected_rows(session.execute(delete(StoredCompletion).where(StoredCompletion.id.in_(ids))))


def erase_tenant_completions(session: Session, tenant_id: str) -> int:
    """In the caller's transaction: every stored completion of the tenant; how many."""
    gone = session.execute(
        delete(StoredCompletion)
        .where(StoredCompletion.tenant_id == tenant_id)
        .execution_options(synchronize_session=False)
    )
    return affected_rows(gone)


def _selected(tenant_id: str, selection: Selection) -> Select[StoredCompletion]:
    conditions: list[ColumnElement[bool]] = [StoredCompletion.tenant_id == tenant_id]
    if selection.model is not None:
        conditions.append(StoredCompletion.model == selection.model)
    for key, value in (selection.metadata or {}).items():
        conditions.append(StoredCompletion.user_metadata[key].as_string() == value)
    if selection.ids is not None:
        conditions.append(StoredCompletion.id.in_(selection.ids))
    if selection.created_after is not None:
        conditions.append(StoredCompletion.created_at >= selection.created_after)
    if selection.created_before is not None:
        conditions.append(StoredCompletion.created_at < selection.created_before)
    return select(StoredCompletion).where(*conditions)


def _completion(row: StoredCompletion) -> StoredChatCompletion:
    return StoredChatCompletion.model_validate({**row.completion, "metadata": row.user_metadata or {}})


def _message(message_id: str, sent: dict[str, Any]) -> StoredMessage:
    content = sent.get("content")
    parts = content if isinstance(content, list) else None
    text = "".join(part.get("text", "") for part in parts) if parts is not None else content
    return StoredMessage(
        id=message_id,
        role=sent["role"],
        content=text,
        name=sent.get("name"),
        tool_calls=sent.get("tool_calls"),
        tool_call_id=sent.get("tool_call_id"),
        content_parts=parts,
    )


def _owned(session: Session, tenant_id: str, completion_id: str, param: str = "completion_id") -> StoredCompletion:
    row = session.get(StoredCompletion, completion_id)
    if row is None or row.tenant_id != tenant_id:
        raise _not_found(completion_id, param)
    return row


def _not_found(completion_id: str, param: str = "completion_id") -> NotFoundError:
    shown = completion_id if len(completion_id) <= 64 else completion_id[:64] + "..."
    return NotFoundError(f"No chat completion found with id '{shown}'.", param=param, code="not_found")
