"""Admin API shapes for tenants, quotas and keys (pydantic; requests and responses), and the ``Quotas`` the limiter
enforces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from adapters.pagination import ListOf
from gateway import bounds
from gateway.bounds import UtcDateTime
from gateway.scheduling import PriorityClass
from gateway.tenancy.keys import has_id_shape

KeyStatus = Literal["active", "revoked", "expired"]


def _not_id_shaped(name: str) -> str:
    # Routes take a tenant's name or id: a name shaped like an id could be taken for another tenant's id.
    if has_id_shape(name):
        raise ValueError("a tenant name may not have the shape of an id (letters, '_' or '-', then 16+ hex digits)")
    return name


TenantName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="lowercase, [a-z0-9_-]; not shaped like an id"),
    AfterValidator(_not_id_shaped),
]
Positive = Annotated[int, Field(ge=1, le=bounds.INT32_MAX)]
Count64 = Annotated[int, Field(ge=0, le=bounds.INT64_MAX)]
Price = Annotated[Decimal, Field(ge=0, le=1_000_000, decimal_places=9)]
ModelId = Annotated[str, Field(min_length=1, max_length=bounds.MODEL)]
CostBudget = Annotated[Decimal, Field(ge=0, lt=10**11, decimal_places=9, description="USD per calendar month")]


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Price = Field(description="USD per 1M prompt tokens")
    output: Price = Field(description="USD per 1M completion tokens")
    training: Price | None = Field(default=None, description="USD per 1M trained tokens; null: the input price")
    cached_input: Price | None = Field(
        default=None,
        description="USD per 1M prompt tokens the engine read from its prefix cache; null: the input price x "
        "LLMAAS_CACHED_INPUT_PRICE_FRACTION",
    )


class QuotaFields(BaseModel):
    """Per-tenant limits. ``null`` means unlimited."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: Positive | None = None
    tokens_per_minute: Positive | None = None
    max_concurrent_requests: Positive | None = None
    monthly_token_budget: Count64 | None = None
    monthly_cost_budget: CostBudget | None = None
    max_tokens_cap: Positive | None = None
    max_storage_bytes: Count64 | None = Field(
        default=None, description="Bytes of uploaded files; null: the server's default"
    )
    max_batch_requests: Positive | None = Field(
        default=None, description="Requests one batch may hold; null: the server's default"
    )
    max_enqueued_batch_tokens: Count64 | None = Field(
        default=None, description="Tokens the tenant's unfinished batches may hold together; null: the server's default"
    )
    model_prices: Annotated[dict[ModelId, ModelPrice], Field(max_length=1000)] = Field(default_factory=dict)
    store_completions: bool | None = Field(
        default=None,
        description="Whether chat completions may be kept with store: true (false: such a request is a 400); null: "
        "they may",
    )
    scheduling_weight: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None,
        description="The tenant's share of a saturated engine within its priority class, relative to other tenants' "
        "weights; null: 1",
    )


class TenantCreate(QuotaFields):
    name: TenantName


class TenantUpdate(QuotaFields):
    """Only the fields present in the body change (``null`` sets a limit to unlimited)."""

    name: TenantName | None = None
    status: Literal["active", "suspended"] | None = None


class TenantOut(QuotaFields):
    id: str
    object: Literal["tenant"] = "tenant"
    name: str
    status: str
    created_at: datetime
    updated_at: datetime


KeyName = Annotated[str, Field(max_length=bounds.KEY_NAME)]


class KeyBudgets(BaseModel):
    """A key's own monthly budgets, counted on its own requests and checked beside its tenant's (the tighter
    one refuses). ``null``: only the tenant's."""

    model_config = ConfigDict(extra="forbid")
    monthly_token_budget: Annotated[int, Field(ge=0, le=bounds.INT64_MAX, strict=True)] | None = Field(
        default=None,
        description="Tokens this key may use per calendar month (UTC); null: only the tenant's budget "
        "(a key made by a tenant's key: that key's budget, and never a larger one)",
    )
    monthly_cost_budget: CostBudget | None = Field(
        default=None,
        description="USD this key may spend per calendar month (UTC); null: only the tenant's budget "
        "(a key made by a tenant's key: that key's budget, and never a larger one)",
    )


class KeyCreate(KeyBudgets):
    name: KeyName = ""
    expires_at: UtcDateTime | None = None
    expires_in_days: Annotated[float, Field(gt=0, le=36_500)] | None = None
    allowed_models: Annotated[list[ModelId], Field(max_length=1000)] | None = Field(
        default=None, description="null: every model (a key made by a tenant's key: that key's models)"
    )
    key_manager: bool = Field(
        default=False, description="The key may revoke the tenant's other keys and make key managers."
    )
    priority_class: PriorityClass | None = Field(
        default=None,
        description="The class its requests wait in when the engine is saturated (interactive before batch); null: "
        "interactive (a key made by a tenant's key: that key's class, and never a higher one)",
    )


class KeyUpdate(KeyBudgets):
    """Only the fields present in the body change (``null`` removes the key's own budget)."""

    name: KeyName | None = None


class KeyOut(KeyBudgets):
    model_config = ConfigDict(extra="ignore")
    id: str
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    name: str
    prefix: str
    allowed_models: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    status: KeyStatus
    key_manager: bool = False
    created_by_key_id: str | None = Field(
        default=None, description="The key that made this one (null: the operator); revoked with it."
    )
    priority_class: PriorityClass = "interactive"
    last_used_at: datetime | None = Field(
        default=None,
        description="When the key last authenticated a request, to the minute (written in batches, so up to "
        "LLMAAS_KEY_ACTIVITY_FLUSH_SECONDS late); null: never",
    )


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown once, never stored.")


class TenantList(ListOf[TenantOut]):
    """Every tenant."""


class KeyList(ListOf[KeyOut]):
    """A tenant's keys (never their secrets)."""


class TenantDeleted(BaseModel):
    id: str
    object: Literal["tenant"] = "tenant"
    deleted: Literal[True] = True
    removed: dict[str, int] = Field(description="How many of each kind of thing the tenant owned were erased.")


@dataclass(frozen=True)
class Quotas:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    monthly_token_budget: int | None = None
    monthly_cost_budget_nanos: int | None = None
    max_tokens_cap: int | None = None
    max_storage_bytes: int | None = None
    max_batch_requests: int | None = None
    max_enqueued_batch_tokens: int | None = None
    store_completions: bool = True
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    """The tenant's own price list (``gateway.accounting.pricing`` says how a price is found)."""
    key_scope: bool = False
    """A key's own budgets (``KeyIdentity.key_budgets``): its refusals name the key."""

    @property
    def has_budget(self) -> bool:
        return self.monthly_token_budget is not None or self.monthly_cost_budget_nanos is not None


def usd_to_nanos(value: Decimal) -> int:
    return int((value * 1_000_000_000).to_integral_value())


def nanos_to_usd(value: int) -> Decimal:
    return Decimal(value) / 1_000_000_000
