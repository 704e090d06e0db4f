"""Webhook endpoints and their deliveries in OpenAI's shapes (``openai.types.webhooks``: ``WebhookEndpoint``,
``WebhookEndpointWithSecret``, ``DeletedWebhookEndpoint``, ``WebhookEndpointTestResult``,
``WebhookEventTypeList``), and the requests that make and change them. ``enabled`` and the deliveries are our
extension: an endpoint can be paused (by its tenant or the operator) without losing its secret, and a tenant
reads what was sent, when, and what its endpoint answered."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from adapters.api_objects import Epoch, RowObject
from adapters.pagination import CursorPage, ListOf
from gateway import bounds
from gateway.webhooks.events import EVENT_TYPES, EventType

Name = Annotated[str, Field(min_length=1, max_length=bounds.WEBHOOK_NAME)]
Url = Annotated[str, Field(min_length=1, max_length=bounds.WEBHOOK_URL)]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    url: Url
    event_types: EventTypes
    enabled: bool = True


class EndpointUpdate(BaseModel):
    """Only what is given changes; ``event_types`` replaces the whole set."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    url: Url | None = None
    event_types: EventTypes | None = None
    enabled: bool | None = None


class EndpointEnabled(BaseModel):
    """The operator disables a tenant's endpoint (until the operator enables it again) or enables it."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_old_secret_active_for_24_hours: bool = False


class EndpointTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_type: EventType


class EndpointOut(RowObject):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[str]
    enabled: bool
    signing_secret_hint: str = Field(validation_alias=AliasChoices("secret_hint", "signing_secret_hint"))
    created_at: Epoch
    updated_at: Epoch


class EndpointWithSecret(EndpointOut):
    signing_secret: str
    """Shown here only: at creation and at a rotation."""


class EndpointList(CursorPage[EndpointOut, str]):
    """A tenant's endpoints, newest first."""


class EndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: Literal[True] = True


class EndpointTestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class EventTypeList(ListOf[str]):
    """The event types an endpoint may subscribe to."""


class DeliveryOut(RowObject):
    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    event_id: str
    """The ``webhook-id`` of every try (a receiver drops the duplicates by it)."""
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: Epoch
    next_attempt_at: Epoch | None
    """When it is tried next (null once delivered or failed)."""
    last_attempt_at: Epoch | None
    finished_at: Epoch | None
    response_status_code: int | None
    """The endpoint's answer to the last try (null: no answer)."""
    last_error: str | None


class DeliveryList(CursorPage[DeliveryOut, str]):
    """One endpoint's deliveries, newest first."""
