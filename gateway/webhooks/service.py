"""Webhook endpoints on the database, as the API serves them: made (the URL checked, the secret generated, shown
once and kept sealed), read, listed, changed, rotated and deleted, always scoped to one tenant (another tenant's
endpoint is simply not found), at most ``max_endpoints`` per tenant; and each endpoint's deliveries. The
operator's view goes through the same methods with the tenant named by the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.pagination import keyset_page
from gateway import audit
from gateway.clock import utcnow
from gateway.db import Database, WebhookDelivery, WebhookEndpoint
from gateway.errors import InvalidRequestError, NotFoundError, PermissionDenied
from gateway.tenancy.keys import new_id
from gateway.tenancy.service import TenancyService, lock_live_tenant
from gateway.webhooks.destinations import Destinations
from gateway.webhooks.events import EVENT_TYPES, PENDING
from gateway.webhooks.objects import (
    DeliveryList,
    DeliveryOut,
    EndpointCreate,
    EndpointDeleted,
    EndpointList,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    EventTypeList,
)
from gateway.webhooks.secrets import SecretBox, hint_of, new_secret

KEPT_OLD_SECRET = timedelta(hours=24)


@dataclass(frozen=True)
class Signing:
    """What a delivery is sent to and signed with: the URL and the secrets in force (newest first)."""

    url: str
    secrets: tuple[str, ...]


class WebhookService:
    def __init__(self, db: Database, box: SecretBox, destinations: Destinations, max_endpoints: int) -> None:
        self._db = db
        self._box = box
        self.destinations = destinations
        self._max_endpoints = max_endpoints

    @staticmethod
    def event_types() -> EventTypeList:
        return EventTypeList(data=list(EVENT_TYPES))

    @staticmethod
    def _own(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
        row = session.get(WebhookEndpoint, endpoint_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFoundError(f"No webhook endpoint found with id '{endpoint_id}'.", param="webhook_endpoint_id")
        return row

    def tenant_id_of(self, ref: str) -> str:
        """The operator's tenant reference (name or id) as an id."""
        with self._db.session() as session:
            return TenancyService._find(session, ref).id

    async def create(self, tenant_id: str, body: EndpointCreate, actor: audit.Actor) -> EndpointWithSecret:
        await self.destinations.check(body.url)
        return await run_in_threadpool(self._create, tenant_id, body, actor)

    def _create(self, tenant_id: str, body: EndpointCreate, actor: audit.Actor) -> EndpointWithSecret:
        now, secret = utcnow(), new_secret()
        endpoint_id = new_id("whep")
        with self._db.session() as session:
            lock_live_tenant(session, tenant_id, "url")  # one creation at a time counts the endpoints
            count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id))
            if int(count or 0) >= self._max_endpoints:
                raise InvalidRequestError(
                    f"This organization has {self._max_endpoints} webhook endpoints, the most it may have: delete "
                    "one first.",
                    code="webhook_endpoint_limit_reached",
                )
            row = WebhookEndpoint(
                id=endpoint_id,
                tenant_id=tenant_id,
                name=body.name,
                url=body.url,
                event_types=list(dict.fromkeys(body.event_types)),
                enabled=body.enabled,
                paused_by_operator=False,
                secret=self._box.seal(endpoint_id, secret),
                secret_hint=hint_of(secret),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            audit.record(session, actor, "webhook_endpoint.create", "webhook_endpoint", row.id, tenant_id, _shown(row))
            return EndpointWithSecret.model_validate({**_fields(row), "signing_secret": secret})

    def get(self, tenant_id: str, endpoint_id: str) -> EndpointOut:
        with self._db.session() as session:
            return EndpointOut.model_validate(self._own(session, tenant_id, endpoint_id))

    def list(self, tenant_id: str, after: str | None, limit: int) -> EndpointList:
        with self._db.session() as session:
            cursor = None
            if after:
                row = self._own(session, tenant_id, after)
                cursor = (row.created_at, row.id)
            query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
            keys = (WebhookEndpoint.created_at, WebhookEndpoint.id)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=True)
            return EndpointList.of([EndpointOut.model_validate(row) for row in rows], more)

    async def update(self, tenant_id: str, endpoint_id: str, body: EndpointUpdate, actor: audit.Actor) -> EndpointOut:
        if body.url is not None:
            await self.destinations.check(body.url)
        changes: dict[str, Any] = body.model_dump(exclude_none=True)
        if "event_types" in changes:
            changes["event_types"] = list(dict.fromkeys(changes["event_types"]))
        return await run_in_threadpool(self._change, tenant_id, endpoint_id, changes, actor)

    def pause(self, tenant_id: str, endpoint_id: str, enabled: bool, actor: audit.Actor) -> EndpointOut:
        """The operator disables an endpoint (its tenant cannot enable it again) or enables it."""
        changes = {"enabled": enabled, "paused_by_operator": not enabled}
        return self._change(tenant_id, endpoint_id, changes, actor)

    def _change(self, tenant_id: str, endpoint_id: str, changes: dict[str, Any], actor: audit.Actor) -> EndpointOut:
        """Set ``changes`` (checked already) on the endpoint; ``updated_at`` moves only if something changed."""
        with self._db.session() as session:
            row = self._own(session, tenant_id, endpoint_id)
            if changes.get("enabled") and row.paused_by_operator and "paused_by_operator" not in changes:
                raise _paused()
            changed = {name: value for name, value in changes.items() if getattr(row, name) != value}
            if changed:
                for name, value in changed.items():
                    setattr(row, name, value)
                row.updated_at = utcnow()
                audit.record(session, actor, "webhook_endpoint.update", "webhook_endpoint", row.id, tenant_id, changed)
            session.flush()
            return EndpointOut.model_validate(row)

    def delete(self, tenant_id: str, endpoint_id: str, actor: audit.Actor) -> EndpointDeleted:
        """The endpoint, with its deliveries (those not sent yet are not sent)."""
        with self._db.session() as session:
            row = self._own(session, tenant_id, endpoint_id)
            session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
            session.delete(row)
            audit.record(session, actor, "webhook_endpoint.delete", "webhook_endpoint", endpoint_id, tenant_id, None)
        return EndpointDeleted(id=endpoint_id)

    def rotate(self, tenant_id: str, endpoint_id: str, keep_old: bool, actor: audit.Actor) -> EndpointWithSecret:
        """A new secret; the old one also signs for 24 hours more if ``keep_old``, else no longer."""
        now, secret = utcnow(), new_secret()
        with self._db.session() as session:
            row = self._own(session, tenant_id, endpoint_id)
            row.previous_secret = row.secret if keep_old else None
            row.previous_secret_expires_at = now + KEPT_OLD_SECRET if keep_old else None
            row.secret, row.secret_hint, row.updated_at = self._box.seal(endpoint_id, secret), hint_of(secret), now
            details = {"keep_old_secret_active_for_24_hours": keep_old}
            audit.record(
                session, actor, "webhook_endpoint.rotate_secret", "webhook_endpoint", row.id, tenant_id, details
            )
            session.flush()
            return EndpointWithSecret.model_validate({**_fields(row), "signing_secret": secret})

    def signing(self, tenant_id: str, endpoint_id: str) -> Signing:
        """The endpoint's URL and secrets (a test delivery; none to an endpoint the operator disabled)."""
        with self._db.session() as session:
            row = self._own(session, tenant_id, endpoint_id)
            if row.paused_by_operator:
                raise _paused()
            return self.signing_of(row)

    def signing_of(self, row: WebhookEndpoint) -> Signing:
        sealed = [row.secret]
        if row.previous_secret and row.previous_secret_expires_at and row.previous_secret_expires_at > utcnow():
            sealed.append(row.previous_secret)
        opened = [self._box.open(row.id, item) for item in sealed]
        return Signing(row.url, tuple(secret for secret in opened if secret is not None))

    def deliveries(self, tenant_id: str, endpoint_id: str, after: str | None, limit: int) -> DeliveryList:
        with self._db.session() as session:
            self._own(session, tenant_id, endpoint_id)
            query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
            cursor = None
            if after:
                row = session.get(WebhookDelivery, after)
                if row is None or row.endpoint_id != endpoint_id:
                    raise NotFoundError(f"No delivery found with id '{after}'.", param="after")
                cursor = (row.created_at, row.id)
            keys = (WebhookDelivery.created_at, WebhookDelivery.id)
            rows, more = keyset_page(session, query, keys, cursor, limit, descending=True)
            return DeliveryList.of([_delivery(row) for row in rows], more)


def _paused() -> PermissionDenied:
    return PermissionDenied(
        "The operator disabled this webhook endpoint; only the operator can enable it again.",
        code="webhook_endpoint_paused",
    )


def _fields(row: WebhookEndpoint) -> dict[str, Any]:
    return EndpointOut.model_validate(row).model_dump()


def _shown(row: WebhookEndpoint) -> dict[str, Any]:
    """What the audit log keeps of an endpoint (never its secret)."""
    return {"name": row.name, "url": row.url, "event_types": row.event_types, "enabled": row.enabled}


def _delivery(row: WebhookDelivery) -> DeliveryOut:
    out = DeliveryOut.model_validate(row)
    return out if row.status == PENDING else out.model_copy(update={"next_attempt_at": None})


def erase_tenant_webhooks(session: Session, tenant_id: str) -> int:
    """Delete the tenant's endpoints and deliveries (its erasure's transaction); how many endpoints went."""
    count = session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id))
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id))
    return int(count or 0)


def webhook_tables(tenant_id: str) -> list[tuple[str, Select[Any]]]:
    """What a tenant's export holds of its webhooks (the export leaves the sealed secrets out)."""
    return [
        (
            "webhooks/endpoints.jsonl",
            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id).order_by(WebhookEndpoint.id),
        ),
        (
            "webhooks/deliveries.jsonl",
            select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id).order_by(WebhookDelivery.id),
        ),
    ]
