"""The outbox as the delivery loop sees it (``gateway.webhooks.delivery``): claiming a due delivery (any gateway;
one whose gateway stopped before recording its try is taken over after the lease), what to send it with, and each
try's outcome: ``delivered`` on a 2xx, else due again after an exponential backoff with jitter, ``failed`` after
the last try. Every change is a compare-and-set through the delivery's lease (``adapters.leases``), so a try is
recorded once, by the gateway that made it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from adapters.leases import Lease
from gateway.clock import utcnow
from gateway.db import Database, WebhookDelivery, WebhookEndpoint, affected_rows
from gateway.webhooks.events import DELIVERED, FAILED, PENDING
from gateway.webhooks.service import Signing, WebhookService

DELIVERY_LEASE = Lease(
    WebhookDelivery,
    WebhookDelivery.id,
    WebhookDelivery.status,
    WebhookDelivery.runner_id,
    WebhookDelivery.heartbeat_at,
    WebhookDelivery.next_attempt_at,
)
"""A delivery is leased by the gateway sending it (``runner_id``, ``heartbeat_at``); the most overdue first."""
_ERROR_CHARS = 512
_PURGE_BATCH = 500


@dataclass(frozen=True)
class Backoff:
    """After the n-th failed try the next waits ``base * 2^(n-1)`` seconds (at most ``cap``), ±20%; after
    ``attempts`` tries the delivery has failed."""

    attempts: int
    base_seconds: float
    cap_seconds: float

    def wait(self, tries: int) -> float:
        wait: float = min(self.cap_seconds, self.base_seconds * 2 ** (tries - 1))
        return wait * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    event_id: str
    payload: str
    tries: int
    """Tries before this one."""
    signing: Signing | None
    """None: the endpoint is disabled (or gone): the delivery fails without being sent."""


def purge_deliveries(db: Database, before: datetime) -> int:
    """Blocking: deliveries that ended (delivered or failed) before ``before``, in batches; how many went. Any
    number of gateways may run it at once."""
    total = 0
    ended = (WebhookDelivery.status.in_((DELIVERED, FAILED)), WebhookDelivery.finished_at < before)
    while True:
        with db.session() as session:
            ids = list(session.scalars(select(WebhookDelivery.id).where(*ended).limit(_PURGE_BATCH)))
            if not ids:
                return total
            gone = session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids), *ended))
            total += affected_rows(gone)


class Outbox:
    def __init__(self, db: Database, endpoints: WebhookService, backoff: Backoff, per_tenant: int) -> None:
        self._db = db
        self._endpoints = endpoints
        self._backoff = backoff
        self._per_tenant = per_tenant

    def claim(self, runner_id: str, stale_after: float) -> Claimed | None:
        """The most overdue due delivery to an endpoint with none in flight, of a tenant with fewer than
        ``per_tenant`` in flight (on all gateways together: slow endpoints of one tenant hold that many slots, never
        all of them), now ``runner_id``'s; with what to send it with."""
        now = utcnow()
        with self._db.session() as session:
            stale_before = now - timedelta(seconds=stale_after)
            in_flight = aliased(WebhookDelivery)
            flying = (in_flight.runner_id.is_not(None), in_flight.heartbeat_at >= stale_before)
            busy = select(in_flight.endpoint_id).where(*flying)
            full = (
                select(in_flight.tenant_id)
                .where(*flying)
                .group_by(in_flight.tenant_id)
                .having(func.count() >= self._per_tenant)
            )
            delivery_id = DELIVERY_LEASE.claim(
                session,
                runner_id,
                now,
                free=(PENDING,),
                takeover=(PENDING,),
                stale_before=stale_before,
                where=(
                    WebhookDelivery.next_attempt_at <= now,
                    WebhookDelivery.endpoint_id.not_in(busy),
                    WebhookDelivery.tenant_id.not_in(full),
                ),
            )
            if delivery_id is None:
                return None
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            endpoint = session.get(WebhookEndpoint, row.endpoint_id)
            enabled = endpoint is not None and endpoint.enabled
            signing = self._endpoints.signing_of(endpoint) if endpoint is not None and enabled else None
            return Claimed(row.id, row.event_id, row.payload, row.attempts, signing)

    def record(self, claimed: Claimed, runner_id: str, status_code: int | None, error: str | None) -> None:
        """The try's outcome: ``status_code`` (None: no answer) and what went wrong (None: delivered)."""
        now = utcnow()
        tries = claimed.tries + 1
        values: dict[str, Any] = {
            "attempts": tries,
            "last_attempt_at": now,
            "response_status_code": status_code,
            "last_error": None if error is None else error[:_ERROR_CHARS],
            "runner_id": None,
        }
        if error is None:
            values |= {"status": DELIVERED, "finished_at": now}
        elif tries >= self._backoff.attempts or claimed.signing is None:
            values |= {"status": FAILED, "finished_at": now}
        else:
            values["next_attempt_at"] = now + timedelta(seconds=self._backoff.wait(tries))
        with self._db.session() as session:
            DELIVERY_LEASE.move(session, claimed.delivery_id, expected=(PENDING,), owner=runner_id, **values)
