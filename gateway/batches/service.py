"""Batches on the database, as the API serves them: created (with one row per request, or failed with the
errors of its lines), retrieved, listed and cancelled, always scoped to one tenant (another tenant's batch is
simply not found). What a batch runner does with a batch is ``gateway.batches.queue``'s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from adapters.pagination import keyset_page
from gateway.batches.lines import CheckedFile
from gateway.batches.objects import BatchList, BatchOut, batch_objects
from gateway.batches.states import BATCH_LEASE, COMPLETION_WINDOW, UNFINISHED, BatchStatus, RequestStatus
from gateway.clock import utcnow
from gateway.context import new_request_id
from gateway.db import Batch, BatchRequest, Database
from gateway.errors import ConflictError, NotFoundError
from gateway.tenancy.keys import new_id
from gateway.tenancy.service import lock_live_tenant
from gateway.webhooks.events import batch_ended

_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class NewBatch:
    """What ``POST /v1/batches`` asked for, checked."""

    tenant_id: str
    key_id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    max_enqueued_tokens: int


class BatchService:
    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def _own(session: Session, tenant_id: str, batch_id: str) -> Batch:
        row = session.get(Batch, batch_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id")
        return row

    def create(self, new: NewBatch, checked: CheckedFile) -> BatchOut:
        """The batch, ``validating`` with its requests for a runner to take, or ``failed`` with the errors of its
        lines (or of the tenant's limit on enqueued tokens) and no requests."""
        now = utcnow()
        row = Batch(
            id=new_id("batch"),
            tenant_id=new.tenant_id,
            key_id=new.key_id,
            endpoint=new.endpoint,
            model=checked.model,
            input_file_id=new.input_file_id,
            completion_window=COMPLETION_WINDOW,
            status=BatchStatus.VALIDATING,
            user_metadata=new.metadata,
            enqueued_tokens=checked.tokens,
            created_at=now,
            expires_at=now + _WINDOW,
        )
        with self._db.session() as session:
            lock_live_tenant(session, new.tenant_id, "input_file_id")  # one creation at a time counts the tokens
            if not checked.errors:
                self._check_enqueued(session, new, checked)
            if checked.errors:
                row.status, row.errors, row.failed_at, row.enqueued_tokens = BatchStatus.FAILED, checked.errors, now, 0
            session.add(row)
            session.flush()
            if checked.errors:
                batch_ended(session, new.tenant_id, row.id, BatchStatus.FAILED)
            else:
                session.execute(
                    insert(BatchRequest),
                    [
                        {
                            "batch_id": row.id,
                            "line": line.line,
                            "custom_id": line.custom_id,
                            "request_id": new_request_id(),
                            "body": line.body,
                            "status": RequestStatus.PENDING,
                            "prompt_tokens": 0,
                            "completion_tokens": 0,
                        }
                        for line in checked.lines
                    ],
                )
            return batch_objects(session, [row])[0]

    @staticmethod
    def _check_enqueued(session: Session, new: NewBatch, checked: CheckedFile) -> None:
        enqueued = session.scalar(
            select(func.coalesce(func.sum(Batch.enqueued_tokens), 0)).where(
                Batch.tenant_id == new.tenant_id, Batch.status.in_(UNFINISHED)
            )
        )
        if int(enqueued or 0) + checked.tokens > new.max_enqueued_tokens:
            checked.fail(
                "token_limit_exceeded",
                f"This batch may take up to {checked.tokens} tokens; with the {int(enqueued or 0)} of this "
                f"organization's unfinished batches that is above its limit of {new.max_enqueued_tokens} enqueued "
                "tokens. Wait for batches to finish, or send a smaller one.",
            )

    def get(self, tenant_id: str, batch_id: str) -> BatchOut:
        with self._db.session() as session:
            return batch_objects(session, [self._own(session, tenant_id, batch_id)])[0]

    def list(self, tenant_id: str, after: str | None, limit: int) -> BatchList:
        with self._db.session() as session:
            cursor = None
            if after:
                row = self._own(session, tenant_id, after)
                cursor = (row.created_at, row.id)
            query = select(Batch).where(Batch.tenant_id == tenant_id)
            rows, more = keyset_page(session, query, (Batch.created_at, Batch.id), cursor, limit, descending=True)
            return BatchList.of(batch_objects(session, rows), more)

    def cancel(self, tenant_id: str, batch_id: str) -> BatchOut:
        """A batch no runner has taken is cancelled at once; a running one is ``cancelling`` until its runner
        (within a heartbeat) stops it and writes what it ran."""
        now = utcnow()
        with self._db.session() as session:
            row = self._own(session, tenant_id, batch_id)
            if BATCH_LEASE.move(
                session,
                batch_id,
                expected=(BatchStatus.VALIDATING,),
                where=(Batch.runner_id.is_(None),),
                status=BatchStatus.CANCELLED,
                cancelling_at=now,
                cancelled_at=now,
            ):
                batch_ended(session, tenant_id, batch_id, BatchStatus.CANCELLED)
            elif not BATCH_LEASE.move(
                session,
                batch_id,
                expected=(BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS),
                status=BatchStatus.CANCELLING,
                cancelling_at=now,
            ):
                session.refresh(row)
                if row.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                    raise ConflictError(
                        f"Cannot cancel a batch with status '{row.status}'.", param="batch_id", code="batch_not_running"
                    )
            session.refresh(row)
            return batch_objects(session, [row])[0]
