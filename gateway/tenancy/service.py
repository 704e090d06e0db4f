"""Tenant and key operations on the database; the admin API and the CLI both call these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import audit
from gateway.db import ApiKey, Database, Tenant
from gateway.errors import ConflictError, InvalidRequestError, NotFoundError
from gateway.tenancy.keys import display_prefix, key_hash, new_id, new_key
from gateway.tenancy.models import (
    KeyCreate,
    KeyCreated,
    KeyOut,
    Quotas,
    TenantCreate,
    TenantOut,
    TenantUpdate,
    usd_to_nanos,
)

QUOTA_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "monthly_token_budget",
    "monthly_cost_budget",
    "max_tokens_cap",
    "max_storage_bytes",
)


def utcnow() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class KeyIdentity:
    """What authentication learns from a key: who it is, and the tenant's current quotas."""

    key_id: str
    tenant_id: str
    tenant_name: str
    tenant_status: str
    allowed_models: tuple[str, ...] | None
    expires_at: datetime | None
    revoked: bool
    quotas: Quotas


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        status=tenant.status,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
        model_prices=tenant.model_prices or {},
        **{name: getattr(tenant, name) for name in QUOTA_FIELDS},
    )


def key_out(key: ApiKey, now: datetime | None = None) -> KeyOut:
    now = now or utcnow()
    status = "revoked" if key.revoked_at else ("expired" if key.expires_at and key.expires_at <= now else "active")
    return KeyOut(
        id=key.id,
        tenant_id=key.tenant_id,
        name=key.name,
        prefix=key.prefix,
        allowed_models=key.allowed_models,
        created_at=key.created_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        status=status,
    )


def quotas_of(tenant: Tenant) -> Quotas:
    cost = tenant.monthly_cost_budget
    return Quotas(
        requests_per_minute=tenant.requests_per_minute,
        tokens_per_minute=tenant.tokens_per_minute,
        max_concurrent_requests=tenant.max_concurrent_requests,
        monthly_token_budget=tenant.monthly_token_budget,
        monthly_cost_budget_nanos=None if cost is None else usd_to_nanos(Decimal(cost)),
        max_tokens_cap=tenant.max_tokens_cap,
        max_storage_bytes=tenant.max_storage_bytes,
        prices={
            model: (Decimal(str(p["input"])), Decimal(str(p["output"])))
            for model, p in (tenant.model_prices or {}).items()
        },
    )


def _identity(key: ApiKey) -> KeyIdentity:
    tenant = key.tenant
    return KeyIdentity(
        key_id=key.id,
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        tenant_status=tenant.status,
        allowed_models=tuple(key.allowed_models) if key.allowed_models is not None else None,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        quotas=quotas_of(tenant),
    )


def _prices_json(prices: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {model: {"input": str(p.input), "output": str(p.output)} for model, p in prices.items()}


class TenancyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tenants ---------------------------------------------------------------------------------------
    def create_tenant(self, data: TenantCreate, actor: audit.Actor = audit.SYSTEM_ACTOR) -> TenantOut:
        now = utcnow()
        tenant = Tenant(
            id=new_id("ten"),
            name=data.name,
            status="active",
            created_at=now,
            updated_at=now,
            model_prices=_prices_json(data.model_prices),
            **{name: getattr(data, name) for name in QUOTA_FIELDS},
        )
        try:
            with self.db.session() as session:
                session.add(tenant)
                session.flush()  # a taken name fails here, before the audit entry
                audit.record(session, actor, "tenant.create", "tenant", tenant.id, tenant.id, {"name": tenant.name})
        except IntegrityError as exc:
            raise ConflictError(f"A tenant named '{data.name}' already exists.", param="name") from exc
        return tenant_out(tenant)

    def list_tenants(self) -> list[TenantOut]:
        with self.db.session() as session:
            return [tenant_out(t) for t in session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))]

    def get_tenant(self, ref: str) -> TenantOut:
        with self.db.session() as session:
            return tenant_out(self._find(session, ref))

    def update_tenant(self, ref: str, update: TenantUpdate, actor: audit.Actor = audit.SYSTEM_ACTOR) -> TenantOut:
        """Change the fields present in ``update``; audited as ``tenant.suspend`` or ``tenant.resume`` when the
        status changes, else ``tenant.update`` (naming the fields, not their values)."""
        try:
            with self.db.session() as session:
                tenant = self._find(session, ref)
                status_before = tenant.status
                for name in update.model_fields_set:
                    value = getattr(update, name)
                    if name == "model_prices":
                        tenant.model_prices = _prices_json(value or {})
                    elif name in ("name", "status") and value is None:
                        raise InvalidRequestError(f"{name} cannot be null", param=name)
                    else:
                        setattr(tenant, name, value)
                tenant.updated_at = utcnow()
                session.flush()
                action = "tenant.update"
                if tenant.status != status_before:
                    action = "tenant.suspend" if tenant.status == "suspended" else "tenant.resume"
                fields = sorted(update.model_fields_set)
                audit.record(session, actor, action, "tenant", tenant.id, tenant.id, {"fields": fields})
                return tenant_out(tenant)
        except IntegrityError as exc:
            raise ConflictError(f"A tenant named '{update.name}' already exists.", param="name") from exc

    @staticmethod
    def _find(session: Session, ref: str) -> Tenant:
        tenant = session.get(Tenant, ref) or session.scalar(select(Tenant).where(Tenant.name == ref))
        if tenant is None:
            raise NotFoundError(f"No tenant '{ref}'.", param="tenant")
        return tenant

    # -- keys ------------------------------------------------------------------------------------------
    def create_key(self, ref: str, data: KeyCreate) -> KeyCreated:
        now = utcnow()
        if data.expires_at is not None and data.expires_in_days is not None:
            raise InvalidRequestError("Give expires_at or expires_in_days, not both.", param="expires_at")
        expires_at = data.expires_at
        if data.expires_in_days is not None:
            expires_at = now + timedelta(days=data.expires_in_days)
        if expires_at is not None and expires_at <= now:
            raise InvalidRequestError("expires_at must be in the future.", param="expires_at")
        secret = new_key()
        with self.db.session() as session:
            tenant = self._find(session, ref)
            key = ApiKey(
                id=new_id("key"),
                tenant_id=tenant.id,
                name=data.name,
                prefix=display_prefix(secret),
                key_hash=key_hash(secret),
                allowed_models=data.allowed_models,
                created_at=now,
                expires_at=expires_at,
            )
            session.add(key)
        return KeyCreated(**key_out(key, now).model_dump(), key=secret)

    def list_keys(self, ref: str) -> list[KeyOut]:
        with self.db.session() as session:
            tenant = self._find(session, ref)
            keys = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at))
            return [key_out(k) for k in keys]

    def revoke_key(self, ref: str, key_id: str) -> KeyOut:
        with self.db.session() as session:
            tenant = self._find(session, ref)
            key = session.get(ApiKey, key_id)
            if key is None or key.tenant_id != tenant.id:
                raise NotFoundError(f"No key '{key_id}' for tenant '{ref}'.", param="key_id")
            key.revoked_at = key.revoked_at or utcnow()
            return key_out(key)

    def identify(self, hashed: str) -> KeyIdentity | None:
        """The key with this hash and its tenant, or None. The hash is compared in the database index;
        the caller compares again in constant time."""
        with self.db.session() as session:
            key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hashed))
            return _identity(key) if key is not None else None

    def identity_of_key(self, key_id: str) -> KeyIdentity | None:
        """What the key with this id may do now (work done later on its behalf, e.g. an eval run, checks it)."""
        with self.db.session() as session:
            key = session.get(ApiKey, key_id)
            return _identity(key) if key is not None else None

    def quotas_of_tenant(self, tenant_id: str) -> Quotas | None:
        with self.db.session() as session:
            tenant = session.get(Tenant, tenant_id)
            return quotas_of(tenant) if tenant else None
