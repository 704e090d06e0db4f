"""The outbox as the delivery loop sees it (``gateway.webhooks.delivery``): claiming a due delivery (any gateway;
one whose gateway stopped before recording its try is taken over after the lease), what to send it with, and each
try's outcome: ``delivered`` on a 2xx, else due again after an exponential backoff with jitter, ``failed`` after
the last try. Every change is a compare-and-set through the delivery's lease (``adapters.leases``), so a try is
recorded once, by the gateway that made it."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session, aliased

from adapters.leases import Lease
from gateway.clock import utcnow
from gateway.db import Database, WebhookDelivery, WebhookEndpoint, affected_rows
from gateway.webhooks.events import DELIVERED, FAILED, PENDING
from gateway.webhooks.service import Signing, WebhookService

logger = logging.getLogger(__name__)

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
    """None: the endpoint is gone: the delivery fails without being sent."""


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
            held = select(WebhookEndpoint.id).where(
                or_(WebhookEndpoint.retry_at > now, WebhookEndpoint.enabled.is_(False))
            )  # backing off after a failed try, or paused: its deliveries wait (still pending)
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
                    WebhookDelivery.endpoint_id.not_in(held),
                ),
            )
            if delivery_id is None:
                return None
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
            endpoint = session.get(WebhookEndpoint, row.endpoint_id)
            if endpoint is None:  # gone: the delivery fails unsent
                return Claimed(row.id, row.event_id, row.payload, row.attempts, None)
            if not endpoint.enabled:  # paused since the claim's query: left pending
                self._release(session, row.id, runner_id, now)
                return None
            if not self._endpoints.key_matches(endpoint):
                # Not a failed try: a gateway holding the right key sends it; this one steps aside a while.
                logger.error(
                    "webhook endpoint %s was sealed under another LLMAAS_WEBHOOK_SECRETS_KEY than this gateway's: "
                    "every gateway on one database needs the same key; delivery %s left to the others",
                    endpoint.id,
                    row.id,
                )
                self._release(session, row.id, runner_id, now + timedelta(seconds=self._backoff.base_seconds))
                return None
            return Claimed(row.id, row.event_id, row.payload, row.attempts, self._endpoints.signing_of(endpoint))

    @staticmethod
    def _release(session: Session, delivery_id: str, runner_id: str, due: datetime) -> None:
        """The claimed delivery is no longer ``runner_id``'s, due at ``due``, no try counted."""
        DELIVERY_LEASE.move(
            session, delivery_id, expected=(PENDING,), owner=runner_id, runner_id=None, next_attempt_at=due
        )

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
            moved = DELIVERY_LEASE.move(session, claimed.delivery_id, expected=(PENDING,), owner=runner_id, **values)
            endpoint_id = session.scalar(
                select(WebhookDelivery.endpoint_id).where(WebhookDelivery.id == claimed.delivery_id)
            )
            endpoint = session.get(WebhookEndpoint, endpoint_id) if moved and claimed.signing is not None else None
            if endpoint is None:
                return
            if error is None:
                endpoint.failures, endpoint.retry_at = 0, None
            else:  # the endpoint backs off as a whole: its other deliveries wait too, their tries not spent
                endpoint.failures += 1
                endpoint.retry_at = now + timedelta(seconds=self._backoff.wait(endpoint.failures))
