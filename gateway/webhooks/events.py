"""The events a tenant may subscribe to, and the outbox they are written to.

``enqueue`` runs inside the transaction that moves a fine-tuning job, an eval run or a batch into a final status
(``fine_tuning_job_hook`` for jobs, whose moves run an ``OnFinal`` hook; the eval and batch queues and services
call it where they move a run or a batch): one ``webhook_deliveries`` row per enabled endpoint of the tenant that
subscribed to the event, with the exact body to sign and send. The state change and its event commit together or
not at all; the delivery loop (``gateway.webhooks.delivery``) sends them after."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.jobs import OnFinal
from adapters.store import FineTuningJob
from gateway.clock import utcnow
from gateway.db import WebhookDelivery, WebhookEndpoint

EventType = Literal[
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
    "eval.run.succeeded",
    "eval.run.failed",
    "eval.run.canceled",
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
]
"""OpenAI's names of the events this server sends (of those the official SDK knows)."""
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
"""A delivery's statuses: due (or being sent), answered with a 2xx, or given up on."""

_EVAL_RUN = {"completed": "eval.run.succeeded", "failed": "eval.run.failed", "canceled": "eval.run.canceled"}
_BATCH = {status: f"batch.{status}" for status in ("completed", "failed", "expired", "cancelled")}
_JOB = {status: f"fine_tuning.job.{status}" for status in ("succeeded", "failed", "cancelled")}


def new_event_id() -> str:
    return f"evt_{secrets.token_hex(12)}"


def event_body(event_id: str, event_type: str, object_id: str, created_at: datetime) -> str:
    """The event as it is sent (and signed): OpenAI's shape."""
    moment = int(created_at.replace(tzinfo=UTC).timestamp())  # stored naive UTC
    body = {"id": event_id, "object": "event", "created_at": moment, "type": event_type, "data": {"id": object_id}}
    return json.dumps(body, separators=(",", ":"))


def enqueue(session: Session, tenant_id: str, event_type: str, object_id: str) -> int:
    """Write the event to the outbox for each of the tenant's enabled endpoints subscribed to it (in the caller's
    transaction); how many deliveries that made."""
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    ).all()
    subscribed = [endpoint_id for endpoint_id, types in rows if event_type in types]
    if not subscribed:
        return 0
    now = utcnow()
    event_id = new_event_id()
    payload = event_body(event_id, event_type, object_id, now)
    for endpoint_id in subscribed:
        session.add(
            WebhookDelivery(
                id=f"whdlv_{secrets.token_hex(12)}",
                event_id=event_id,
                endpoint_id=endpoint_id,
                tenant_id=tenant_id,
                event_type=event_type,
                payload=payload,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    session.flush()
    return len(subscribed)


def eval_run_ended(session: Session, tenant_id: str, run_id: str, status: str) -> None:
    """An eval run entered the final ``status`` in this transaction."""
    enqueue(session, tenant_id, _EVAL_RUN[status], run_id)


def batch_ended(session: Session, tenant_id: str, batch_id: str, status: str) -> None:
    """A batch entered the final ``status`` in this transaction."""
    enqueue(session, tenant_id, _BATCH[status], batch_id)


def fine_tuning_job_hook(charge: OnFinal) -> Callable[[Session, FineTuningJob], None]:
    """The job service's and the worker's ``on_final``: ``charge`` the job, then write its event, in the
    transaction that ends it."""

    def on_final(session: Session, job: FineTuningJob) -> None:
        charge(session, job)
        enqueue(session, job.tenant_id, _JOB[job.status], job.id)

    return on_final
