"""Batches as a batch runner sees them (``gateway.batches.runner``): claiming one (any gateway; a batch whose
runner stopped heartbeating is taken over and resumed), its heartbeat, its pending requests, each request's
result as it finishes, and the batch's end with its output and error files (``gateway.batches.output``).

Every change is a compare-and-set (``adapters.leases``): a request's result is stored only while it is still
pending (so it is stored once), and a batch is ended only by the runner that holds it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from adapters.leases import compare_and_set
from gateway.batches.output import output_files
from gateway.batches.states import BATCH_LEASE, RUNNING, BatchStatus, RequestStatus
from gateway.clock import utcnow
from gateway.db import Batch, BatchRequest, Database
from gateway.fine_tuning.files import FileStore
from gateway.webhooks.events import batch_ended

_ENDED_AT = {
    BatchStatus.COMPLETED: "completed_at",
    BatchStatus.CANCELLED: "cancelled_at",
    BatchStatus.EXPIRED: "expired_at",
    BatchStatus.FAILED: "failed_at",
}
_NOT_RUN = {
    BatchStatus.CANCELLED: {"code": "batch_cancelled", "message": "This request was not run: the batch was cancelled."},
    BatchStatus.FAILED: {
        "code": "batch_failed",
        "message": "This request was not run: the API key that created the batch, or its organization, can no "
        "longer be used.",
    },
    BatchStatus.EXPIRED: {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    },
}


class BatchQueue:
    def __init__(self, db: Database, files: FileStore) -> None:
        self._db = db
        self._files = files

    def claim(self, runner_id: str, stale_after: float) -> str | None:
        """A batch waiting to start, or one whose runner stopped heartbeating, now this runner's; a new one is
        moved to ``in_progress``."""
        now = utcnow()
        with self._db.session() as session:
            batch_id = BATCH_LEASE.claim(
                session,
                runner_id,
                now,
                free=(BatchStatus.VALIDATING,),
                takeover=RUNNING,
                stale_before=now - timedelta(seconds=stale_after),
            )
            if batch_id is not None:
                BATCH_LEASE.move(
                    session,
                    batch_id,
                    expected=(BatchStatus.VALIDATING,),
                    owner=runner_id,
                    status=BatchStatus.IN_PROGRESS,
                    in_progress_at=now,
                )
            return batch_id

    def batch(self, batch_id: str) -> Batch | None:
        with self._db.session() as session:
            row = session.get(Batch, batch_id)
            if row is not None:
                session.expunge(row)
            return row

    def heartbeat(self, batch_id: str, runner_id: str) -> bool:
        """Still this runner's, running and in its window (False once cancelling, expired, or taken over)."""
        now = utcnow()
        with self._db.session() as session:
            return BATCH_LEASE.heartbeat_of(
                session, batch_id, runner_id, now, statuses=(BatchStatus.IN_PROGRESS,), where=(Batch.expires_at > now,)
            )

    def pending(self, batch_id: str) -> list[BatchRequest]:
        with self._db.session() as session:
            rows = list(
                session.scalars(
                    select(BatchRequest)
                    .where(BatchRequest.batch_id == batch_id, BatchRequest.status == RequestStatus.PENDING)
                    .order_by(BatchRequest.line)
                )
            )
            session.expunge_all()
            return rows

    def record(
        self,
        row_id: int,
        status: RequestStatus,
        response: dict[str, Any],
        usage: tuple[int, int],
    ) -> bool:
        """Store a request's result if it is still pending (whether it was)."""
        with self._db.session() as session:
            return compare_and_set(
                session,
                BatchRequest,
                (BatchRequest.id == row_id, BatchRequest.status == RequestStatus.PENDING),
                {
                    "status": status,
                    "response": response,
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "finished_at": utcnow(),
                },
            )

    def finish(self, batch_id: str, runner_id: str, status: BatchStatus) -> None:
        """End the batch (if still this runner's): requests not run become errors (cancelled, expired), the output
        and error files are written, and the batch moves to ``status`` with them (and its webhook event)."""
        now = utcnow()
        with self._db.session() as session:
            if status == BatchStatus.COMPLETED and not BATCH_LEASE.move(
                session,
                batch_id,
                expected=(BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING),
                owner=runner_id,
                status=BatchStatus.FINALIZING,
                finalizing_at=now,
            ):
                status = BatchStatus.CANCELLED  # cancelled as its last request ended (else not this runner's)
            batch = session.get(Batch, batch_id)
            if batch is None or batch.runner_id != runner_id or batch.status not in RUNNING:
                return
            tenant_id = batch.tenant_id
            if status in _NOT_RUN:
                compare_and_set(
                    session,
                    BatchRequest,
                    (BatchRequest.batch_id == batch_id, BatchRequest.status == RequestStatus.PENDING),
                    {"status": RequestStatus.FAILED, "error": _NOT_RUN[status], "finished_at": now},
                )
            rows = list(
                session.scalars(
                    select(BatchRequest)
                    .where(BatchRequest.batch_id == batch_id, BatchRequest.status != RequestStatus.PENDING)
                    .order_by(BatchRequest.line)
                )
            )
        made = output_files(self._files, tenant_id, batch_id, rows)
        values: dict[str, Any] = {"status": status, _ENDED_AT[status]: utcnow()}
        values |= {"output_file_id": made.output_file_id, "error_file_id": made.error_file_id}
        with self._db.session() as session:
            ended = BATCH_LEASE.move(session, batch_id, expected=RUNNING, owner=runner_id, **values)
            if ended:
                batch_ended(session, tenant_id, batch_id, status)
        if not ended:  # taken over meanwhile: the new runner writes its own files
            self._files.remove_files(made.ids)
