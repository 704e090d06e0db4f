"""``Idempotency-Key`` on the create routes (files, fine-tuning jobs, evals and their runs, batches): a retry with
the same key, by the same tenant on the same endpoint, gets the first answer and creates nothing twice.

As the IETF draft "The Idempotency-Key HTTP Header Field" and Stripe have it: the first request with a key claims
it (a row, unique per tenant, endpoint and key); once its create succeeded the row keeps the answer, and a retry
is answered that (status and body, with ``Idempotent-Replayed: true``) without running again. The same key with
another request (a different body) is refused with 422 ``idempotency_key_reused``; a retry while the first is
still running gets 409 ``idempotency_key_in_use`` with ``retry-after``. A create that fails gives its key back
(nothing was created: a retry runs anew). Keys are at most 255 printable ASCII characters; they are kept for
``LLMAAS_IDEMPOTENCY_RETENTION_HOURS`` (expired ones are deleted by the next create of any tenant), and deleted
with their tenant. A claim left in flight by a process that died is taken over after ``IN_FLIGHT_SECONDS``.

A JSON request is told apart by a digest of its body. An upload (multipart) is not read to do so — the key is
checked before its bytes are — so there the digest is of its declared length: a retry of the same upload has it."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from gateway.clock import utcnow
from gateway.db import Database, IdempotencyKey, affected_rows
from gateway.errors import ConflictError, InvalidRequestError, UnprocessableContent

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_DESCRIPTION = (
    "Makes the create safe to retry: a retry with the same key (up to 255 printable ASCII characters) within "
    "LLMAAS_IDEMPOTENCY_RETENTION_HOURS gets the first answer (with Idempotent-Replayed: true) and creates nothing."
)
IN_FLIGHT_SECONDS = 900.0
"""A claim this old with no answer is taken to have died with its process, and may be claimed again."""
RETRY_AFTER_SECONDS = 1
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: dict[str, object]


class IdempotencyStore:
    """The claimed keys in the database (every call blocking: run it in a worker thread)."""

    def __init__(self, db: Database, retention_hours: float) -> None:
        self._db = db
        self._retention = timedelta(hours=retention_hours)

    def claim(self, tenant_id: str, endpoint: str, key: str, fingerprint: str) -> Replay | None:
        """Claim the key for this request (None), or the first request's answer to replay; raises 409 while
        that one runs, 422 where the key went with another request."""
        now = utcnow()
        with self._db.session() as session:
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - self._retention))
        try:
            with self._db.session() as session:
                session.add(
                    IdempotencyKey(
                        tenant_id=tenant_id, endpoint=endpoint, key=key, fingerprint=fingerprint, created_at=now
                    )
                )
            return None
        except IntegrityError:
            pass  # claimed before: by this request's first try, or by another request
        with self._db.session() as session:
            row = session.scalar(_row(tenant_id, endpoint, key))
            if row is None:  # its claim was given back meanwhile
                raise _in_use()
            if row.fingerprint != fingerprint:
                raise UnprocessableContent(
                    f"This {HEADER} was used with another request; use a new key for a new request.",
                    param=HEADER,
                    code="idempotency_key_reused",
                )
            if row.status_code is not None and row.response is not None:
                return Replay(row.status_code, row.response)
            if not _take_over(session, row, now):
                raise _in_use()
        return None

    def complete(self, tenant_id: str, endpoint: str, key: str, status_code: int, body: dict[str, object]) -> None:
        with self._db.session() as session:
            session.execute(
                update(IdempotencyKey)
                .where(*_identity(tenant_id, endpoint, key))
                .values(status_code=status_code, response=body)
            )

    def release(self, tenant_id: str, endpoint: str, key: str) -> None:
        """The create failed: the key is free again."""
        with self._db.session() as session:
            session.execute(
                delete(IdempotencyKey).where(*_identity(tenant_id, endpoint, key), IdempotencyKey.status_code.is_(None))
            )


def erase_tenant_keys(session: Session, tenant_id: str) -> int:
    """Delete every key the tenant claimed (with the tenant's other data); how many."""
    return affected_rows(session.execute(delete(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id)))


def _identity(tenant_id: str, endpoint: str, key: str) -> tuple[ColumnElement[bool], ...]:
    return (IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.endpoint == endpoint, IdempotencyKey.key == key)


def _row(tenant_id: str, endpoint: str, key: str) -> Select[IdempotencyKey]:
    return select(IdempotencyKey).where(*_identity(tenant_id, endpoint, key))


def _take_over(session: Session, row: IdempotencyKey, now: datetime) -> bool:
    """An abandoned claim becomes this request's (one request wins a race for it)."""
    if row.created_at > now - timedelta(seconds=IN_FLIGHT_SECONDS):
        return False
    taken = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == row.id, IdempotencyKey.created_at == row.created_at)
        .values(created_at=now)
    )
    return affected_rows(taken) == 1


def _in_use() -> ConflictError:
    return ConflictError(
        f"A request with this {HEADER} is still being processed; retry it later.",
        param=HEADER,
        code="idempotency_key_in_use",
        headers={"retry-after": str(RETRY_AFTER_SECONDS)},
    )


class IdempotentCreate:
    """One create request's key (or none): ``await once(create)`` runs ``create`` at most once per key."""

    def __init__(self, store: IdempotencyStore, identity: tuple[str, str, str] | None, fingerprint: str) -> None:
        self._store = store
        self._identity = identity
        """Tenant, endpoint and key; None: the request has no key."""
        self._fingerprint = fingerprint

    async def once(self, create: Callable[[], Awaitable[M]]) -> M | JSONResponse:
        """``create``'s result, or the first request's answer as it was sent (the route declares its
        ``response_model``, since it may answer either)."""
        identity = self._identity
        if identity is None:
            return await create()
        replay = await run_in_threadpool(self._store.claim, *identity, self._fingerprint)
        if replay is not None:
            return JSONResponse(replay.body, replay.status_code, headers={REPLAYED_HEADER: "true"})
        # Once claimed, the create and its stored answer finish even if the client leaves meanwhile: a key left
        # claimed would be refused for a while and then run again, making what the first run made twice.
        return await asyncio.shield(asyncio.ensure_future(self._create_and_store(identity, create)))

    async def _create_and_store(self, identity: tuple[str, str, str], create: Callable[[], Awaitable[M]]) -> M:
        try:
            result = await create()
        except Exception:
            await run_in_threadpool(self._store.release, *identity)  # nothing was made: a retry runs anew
            raise
        body = result.model_dump(mode="json", by_alias=True)  # what FastAPI sends for it
        await run_in_threadpool(self._store.complete, *identity, 200, body)
        return result


async def idempotent_create(
    request: Request, store: IdempotencyStore, tenant_id: str, key: str | None
) -> IdempotentCreate:
    """The request's ``Idempotency-Key`` checked (400 where it is malformed), and the digest of its body; a
    replayed answer says so in ``Idempotent-Replayed``."""
    if key is not None and not _KEY.fullmatch(key):
        raise InvalidRequestError(
            f"The {HEADER} header must be 1 to 255 printable ASCII characters.", param=HEADER, code="invalid_value"
        )
    if key is None:
        return IdempotentCreate(store, None, "")
    if request.headers.get("content-type", "").startswith("multipart/"):
        fingerprint = _digest(b"multipart:" + request.headers.get("content-length", "").encode())
    else:
        fingerprint = _digest(await request.body())
    endpoint = f"{request.method} {request.url.path}"[:200]
    return IdempotentCreate(store, (tenant_id, endpoint, key), fingerprint)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
