"""Tenant, key and usage operations on the database; the admin API and the CLI both call these."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db import ApiKey, Database, Tenant, UsageRecord
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
    nanos_to_usd,
    usd_to_nanos,
)

Bucket = Literal["hour", "day", "month", "none"]
GroupField = Literal["tenant", "key", "model", "kind"]
QUOTA_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "monthly_token_budget",
    "monthly_cost_budget",
    "max_tokens_cap",
)


def utcnow() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


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


@dataclass(frozen=True)
class UsageEntry:
    request_id: str
    tenant_id: str
    key_id: str | None
    model: str
    kind: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    created_at: datetime
    end_user: str | None = None


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
        prices={
            model: (Decimal(str(p["input"])), Decimal(str(p["output"])))
            for model, p in (tenant.model_prices or {}).items()
        },
    )


def _prices_json(prices: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {model: {"input": str(p.input), "output": str(p.output)} for model, p in prices.items()}


class TenancyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tenants ---------------------------------------------------------------------------------------
    def create_tenant(self, data: TenantCreate) -> TenantOut:
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
        except IntegrityError as exc:
            raise ConflictError(f"A tenant named '{data.name}' already exists.", param="name") from exc
        return tenant_out(tenant)

    def list_tenants(self) -> list[TenantOut]:
        with self.db.session() as session:
            return [tenant_out(t) for t in session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))]

    def get_tenant(self, ref: str) -> TenantOut:
        with self.db.session() as session:
            return tenant_out(self._find(session, ref))

    def update_tenant(self, ref: str, update: TenantUpdate) -> TenantOut:
        try:
            with self.db.session() as session:
                tenant = self._find(session, ref)
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
                return tenant_out(tenant)
        except IntegrityError as exc:
            raise ConflictError(f"A tenant named '{update.name}' already exists.", param="name") from exc

    def delete_tenant(self, ref: str) -> str:
        with self.db.session() as session:
            tenant = self._find(session, ref)
            session.delete(tenant)
            return tenant.id

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
        expires_at = _naive_utc(data.expires_at) if data.expires_at else None
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
            if key is None:
                return None
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

    def quotas_of_tenant(self, tenant_id: str) -> Quotas | None:
        with self.db.session() as session:
            tenant = session.get(Tenant, tenant_id)
            return quotas_of(tenant) if tenant else None

    # -- usage -----------------------------------------------------------------------------------------
    def record_usage(self, entries: Iterable[UsageEntry]) -> None:
        rows = [
            {
                "request_id": e.request_id,
                "tenant_id": e.tenant_id,
                "key_id": e.key_id,
                "model": e.model,
                "kind": e.kind,
                "outcome": e.outcome,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "cost": nanos_to_usd(e.cost_nanos),
                "created_at": e.created_at,
                "end_user": e.end_user,
            }
            for e in entries
        ]
        if rows:
            with self.db.session() as session:
                session.execute(UsageRecord.__table__.insert(), rows)

    def month_to_date(self, tenant_id: str, now: datetime | None = None) -> tuple[int, int]:
        """(tokens, cost in nano-USD) the tenant used this calendar month (UTC)."""
        start = month_start(now or utcnow())
        with self.db.session() as session:
            tokens, cost = session.execute(
                select(
                    func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0),
                    func.coalesce(func.sum(UsageRecord.cost), 0),
                ).where(UsageRecord.tenant_id == tenant_id, UsageRecord.created_at >= start)
            ).one()
        return int(tokens), usd_to_nanos(Decimal(cost))

    def usage(
        self,
        *,
        tenant: str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: tuple[GroupField, ...] = ("tenant", "key", "model", "kind"),
        bucket: Bucket = "day",
    ) -> dict[str, Any]:
        with self.db.session() as session:
            tenant_id = self._find(session, tenant).id if tenant else None
            dialect = session.get_bind().dialect.name
            columns: list[Any] = []
            if "tenant" in group_by:
                columns.append(UsageRecord.tenant_id.label("tenant_id"))
            if "key" in group_by:
                columns.append(UsageRecord.key_id.label("key_id"))
            if "model" in group_by:
                columns.append(UsageRecord.model.label("model"))
            if "kind" in group_by:
                columns.append(UsageRecord.kind.label("kind"))
            if bucket != "none":
                columns.append(_bucket_expr(dialect, bucket).label("period_start"))
            sums = [
                func.count().label("requests"),
                func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
                func.coalesce(func.sum(UsageRecord.cost), 0).label("cost"),
            ]
            query = select(*columns, *sums)
            if tenant_id:
                query = query.where(UsageRecord.tenant_id == tenant_id)
            if key_id:
                query = query.where(UsageRecord.key_id == key_id)
            if model:
                query = query.where(UsageRecord.model == model)
            if since:
                query = query.where(UsageRecord.created_at >= _naive_utc(since))
            if until:
                query = query.where(UsageRecord.created_at < _naive_utc(until))
            if columns:
                query = query.group_by(*columns).order_by(*columns)
            rows = [dict(row._mapping) for row in session.execute(query)]
        data = [_usage_row(row) for row in rows if row["requests"]]
        totals = {
            name: sum(row[name] for row in data)
            for name in ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
        }
        totals["cost"] = str(sum((Decimal(row["cost"]) for row in data), Decimal(0)))
        return {"object": "list", "data": data, "totals": totals}


def _bucket_expr(dialect: str, bucket: Bucket) -> Any:
    column = UsageRecord.created_at
    if dialect == "postgresql":
        fmt = {"hour": 'YYYY-MM-DD"T"HH24:00:00', "day": "YYYY-MM-DD", "month": "YYYY-MM"}[bucket]
        return func.to_char(func.date_trunc(bucket, column), fmt)
    fmt = {"hour": "%Y-%m-%dT%H:00:00", "day": "%Y-%m-%d", "month": "%Y-%m"}[bucket]
    return func.strftime(fmt, column)


def _usage_row(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["prompt_tokens"] = int(row["prompt_tokens"])
    row["completion_tokens"] = int(row["completion_tokens"])
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["requests"] = int(row["requests"])
    row["cost"] = str(Decimal(row["cost"]).normalize() if row["cost"] else Decimal(0))
    return row


def usage_csv(report: dict[str, Any]) -> str:
    rows = report["data"]
    out = io.StringIO()
    fields = (
        list(rows[0].keys()) if rows else ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost"]
    )
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
