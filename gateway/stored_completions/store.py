"""Stored chat completions in the database, per tenant: what ``store: true`` keeps (the request that shaped the
completion and the completion as answered, with its ``metadata``), the checks before the model runs (the tenant may
store, and its storage quota has room), the list with its filters (keyset-paged on creation time), a completion's
messages, the metadata update, deletion, and the purges of retention and tenant erasure.

A completion's bytes (its request's and its answer's JSON) count in the tenant's storage quota beside its files
(``gateway.storage_quota``). The request's bytes must fit before the model runs, and again when the answer is
saved, under the tenant's lock (so concurrent requests cannot all pass on the same "bytes used"); the answer is then
stored whatever its length (it answers what the tenant asked for, as a batch's output file is), so a tenant passes
its quota by at most the answers saved while it still had room. A metadata update that grows a completion must fit
too. A completion of another tenant is never found."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, delete, exists, func, select
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.interfaces import ORMOption

from adapters.pagination import keyset_page
from gateway import storage_quota
from gateway.clock import utcnow
from gateway.db import Database, StoredCompletion, affected_rows
from gateway.errors import InvalidRequestError, NotFoundError
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


def message_text(content: str | builtins.list[dict[str, Any]] | None) -> str:
    """A kept message's content as text: its text parts joined (the request admits text parts only)."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content)


def _size(*parts: Any) -> int:
    return sum(len(json.dumps(part, ensure_ascii=False).encode()) for part in parts)


class CompletionStore:
    def __init__(self, db: Database, default_quota: int) -> None:
        self._db = db
        self._default_quota = default_quota

    def quota_of(self, tenant: TenantPrincipal) -> int:
        return storage_quota.quota_of(tenant, self._default_quota)

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
        """The cheap first refusal (no lock): ``incoming`` more bytes would pass the tenant's quota (429)."""
        with self._db.sessions() as session:
            storage_quota.check_room(session, tenant.tenant_id, incoming, self.quota_of(tenant), param)

    def save(
        self,
        tenant: TenantPrincipal,
        request: dict[str, Any],
        completion: dict[str, Any],
        metadata: dict[str, str] | None,
    ) -> None:
        """Blocking: one finished completion, the tenant locked (never stored for a tenant deleted meanwhile) and
        its request's bytes checked again against the quota under that lock."""
        tenant_id = tenant.tenant_id
        with self._db.session() as session:
            lock_live_tenant(session, tenant_id, "store")
            storage_quota.check_room(session, tenant_id, _size(request, metadata), self.quota_of(tenant), "store")
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
                found = session.execute(
                    select(StoredCompletion.created_at, StoredCompletion.id).where(
                        StoredCompletion.id == after, StoredCompletion.tenant_id == tenant_id
                    )
                ).first()
                if found is None:
                    raise _not_found(after, "after")
                cursor = (found.created_at, found.id)
            query = _selected(session, tenant_id, Selection(model=model, metadata=metadata))
            query = query.options(defer(StoredCompletion.request))
            keys = (StoredCompletion.created_at, StoredCompletion.id)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=order == "desc")
            return StoredCompletionList.of([_completion(row) for row in rows], more)

    def get(self, tenant_id: str, completion_id: str) -> StoredChatCompletion:
        with self._db.sessions() as session:
            return _completion(_owned(session, tenant_id, completion_id, defer(StoredCompletion.request)))

    def messages(
        self, tenant_id: str, completion_id: str, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> StoredMessageList:
        with self._db.sessions() as session:
            request = _owned(session, tenant_id, completion_id, defer(StoredCompletion.completion)).request
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
                query = _selected(session, tenant_id, selection)
                rows, more = keyset_page(session, query, keys, cursor, min(left, _READ_BATCH), descending=True)
                kept = [Kept(row.id, row.request, row.completion, row.user_metadata) for row in rows]
                if rows:
                    left, cursor = left - len(rows), (rows[-1].created_at, rows[-1].id)
            yield from kept
            if not more or not rows:
                return

    def selected(self, tenant_id: str, selection: Selection) -> tuple[builtins.list[str], int]:
        """Blocking: the ids ``selection`` reads and the bytes they are stored in (an export's cheap first check;
        the file it writes is held to the quota again when added), without reading the completions themselves."""
        order = (StoredCompletion.created_at.desc(), StoredCompletion.id.desc())
        with self._db.sessions() as session:
            columns = _selected(session, tenant_id, selection).with_only_columns(
                StoredCompletion.id, StoredCompletion.bytes
            )
            rows = session.execute(columns.order_by(*order).limit(selection.limit)).all()
        return [row.id for row in rows], sum(row.bytes for row in rows)

    # -- change ----------------------------------------------------------------------------------------------------
    def update(
        self, tenant: TenantPrincipal, completion_id: str, metadata: dict[str, str] | None
    ) -> StoredChatCompletion:
        """The new metadata (the row locked, so a delete meanwhile is a 404); growing the completion must fit in
        the quota, checked under the tenant's lock."""
        tenant_id = tenant.tenant_id
        try:
            with self._db.session() as session:
                lock_live_tenant(session, tenant_id, "completion_id")
                row = _owned(session, tenant_id, completion_id, lock=True)
                grown = _size(row.request, row.completion, metadata) - row.bytes
                if grown > 0:
                    storage_quota.check_room(session, tenant_id, grown, self.quota_of(tenant), "metadata")
                row.user_metadata = metadata
                row.bytes += grown
                session.flush()
                return _completion(row)
        except StaleDataError:  # deleted between the read and the write
            raise _not_found(completion_id) from None

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


def _selected(session: Session, tenant_id: str, selection: Selection) -> Select[StoredCompletion]:
    conditions: list[ColumnElement[bool]] = [StoredCompletion.tenant_id == tenant_id]
    if selection.model is not None:
        conditions.append(StoredCompletion.model == selection.model)
    sqlite = session.get_bind().dialect.name == "sqlite"
    for key, value in (selection.metadata or {}).items():
        conditions.append(_has_pair(key, value) if sqlite else StoredCompletion.user_metadata[key].as_string() == value)
    if selection.ids is not None:
        conditions.append(StoredCompletion.id.in_(selection.ids))
    if selection.created_after is not None:
        conditions.append(StoredCompletion.created_at >= selection.created_after)
    if selection.created_before is not None:
        conditions.append(StoredCompletion.created_at < selection.created_before)
    return select(StoredCompletion).where(*conditions)


def _has_pair(key: str, value: str) -> ColumnElement[bool]:
    """SQLite: the metadata holds ``key: value``, for any key (its JSON path syntax cannot name every key: one with
    ``"`` or any non-ASCII character, as SQLAlchemy escapes it, matches nothing)."""
    pairs = func.json_each(StoredCompletion.user_metadata).table_valued("key", "value")
    return exists().where(pairs.c.key == key, pairs.c.value == value)


def _completion(row: StoredCompletion) -> StoredChatCompletion:
    return StoredChatCompletion.model_validate({**row.completion, "metadata": row.user_metadata or {}})


def _message(message_id: str, sent: dict[str, Any]) -> StoredMessage:
    content = sent.get("content")
    parts = content if isinstance(content, list) else None
    text = message_text(content) if parts is not None else content
    return StoredMessage(
        id=message_id,
        role=sent["role"],
        content=text,
        name=sent.get("name"),
        tool_calls=sent.get("tool_calls"),
        tool_call_id=sent.get("tool_call_id"),
        content_parts=parts,
    )


def _owned(
    session: Session, tenant_id: str, completion_id: str, *options: ORMOption, lock: bool = False
) -> StoredCompletion:
    query = select(StoredCompletion).where(
        StoredCompletion.id == completion_id, StoredCompletion.tenant_id == tenant_id
    )
    row = session.scalar(query.options(*options).with_for_update() if lock else query.options(*options))
    if row is None:
        raise _not_found(completion_id)
    return row


def _not_found(completion_id: str, param: str = "completion_id") -> NotFoundError:
    shown = completion_id if len(completion_id) <= 64 else completion_id[:64] + "..."
    return NotFoundError(f"No chat completion found with id '{shown}'.", param=param, code="not_found")
