"""Tenant and key operations on the database; the admin API, the console and the CLI all call these.

A key made by a tenant's key (``by_key``) is never broader than that key: the same or fewer models, an expiry
no later than its own, and key management only from a key manager. Only the operator and key managers revoke
a tenant's other keys; any key may revoke itself. Revoking a key ends its console sessions, suspending or
deleting a tenant ends all of the tenant's, in the same transaction; key changes are audited there too."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import cast

from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit import SYSTEM_ACTOR, Actor, record
from gateway.clock import utcnow
from gateway.db import ApiKey, ConsoleSession, Database, Tenant
from gateway.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDenied
from gateway.scheduling import PriorityClass, class_rank
from gateway.tenancy.keys import display_prefix, key_hash, new_id, new_key
from gateway.tenancy.models import (
    KeyBudgets,
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyStatus,
    KeyUpdate,
    ModelPrice,
    Quotas,
    TenantCreate,
    TenantOut,
    TenantUpdate,
    usd_to_nanos,
)
from gateway.tenancy.sessions import end_sessions

QUOTA_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "monthly_token_budget",
    "monthly_cost_budget",
    "max_tokens_cap",
    "max_storage_bytes",
    "max_batch_requests",
    "max_enqueued_batch_tokens",
    "scheduling_weight",
    "store_completions",
)


def lock_live_tenant(session: Session, tenant_id: str, param: str) -> None:
    """Lock the tenant's row for ``session``'s transaction, so that content added there and the tenant's deletion
    (which takes the same lock) happen one after the other; a tenant deleted meanwhile is a 404 naming ``param``."""
    if session.scalar(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update()) is None:
        raise NotFoundError("This organization no longer exists.", param=param)


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
    key_manager: bool = False
    key_budgets: Quotas = field(default_factory=Quotas)
    """The key's own monthly budgets (only those two fields are set), admitted beside the tenant's."""
    priority_class: PriorityClass = "interactive"
    """The class its requests wait in when the engine is saturated."""
    scheduling_weight: int = 1
    """Its tenant's share of a saturated engine within the class."""


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        status=tenant.status,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
        model_prices=_prices_of(tenant),
        **{name: getattr(tenant, name) for name in QUOTA_FIELDS},
    )


def key_out(key: ApiKey, now: datetime | None = None) -> KeyOut:
    now = now or utcnow()
    status: KeyStatus = (
        "revoked" if key.revoked_at else ("expired" if key.expires_at and key.expires_at <= now else "active")
    )
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
        key_manager=key.key_manager,
        created_by_key_id=key.created_by_key_id,
        priority_class=_priority_class(key.priority_class),
        monthly_token_budget=key.monthly_token_budget,
        monthly_cost_budget=key.monthly_cost_budget,
        last_used_at=key.last_used_at,
    )


def _priority_class(stored: str) -> PriorityClass:
    return "batch" if stored == "batch" else "interactive"


def _prices_of(tenant: Tenant) -> dict[str, ModelPrice]:
    return {model: ModelPrice.model_validate(price) for model, price in (tenant.model_prices or {}).items()}


def _nanos(usd: Decimal | None) -> int | None:
    return None if usd is None else usd_to_nanos(Decimal(usd))


def quotas_of(tenant: Tenant) -> Quotas:
    return Quotas(
        requests_per_minute=tenant.requests_per_minute,
        tokens_per_minute=tenant.tokens_per_minute,
        max_concurrent_requests=tenant.max_concurrent_requests,
        monthly_token_budget=tenant.monthly_token_budget,
        monthly_cost_budget_nanos=_nanos(tenant.monthly_cost_budget),
        max_tokens_cap=tenant.max_tokens_cap,
        max_storage_bytes=tenant.max_storage_bytes,
        max_batch_requests=tenant.max_batch_requests,
        max_enqueued_batch_tokens=tenant.max_enqueued_batch_tokens,
        store_completions=tenant.store_completions is not False,
        prices=_prices_of(tenant),
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
        key_manager=key.key_manager,
        priority_class=_priority_class(key.priority_class),
        scheduling_weight=tenant.scheduling_weight or 1,
        key_budgets=Quotas(
            monthly_token_budget=key.monthly_token_budget,
            monthly_cost_budget_nanos=_nanos(key.monthly_cost_budget),
            key_scope=True,
        ),
    )


def _acting_key(session: Session, tenant: Tenant, key_id: str, now: datetime) -> ApiKey:
    """The tenant's key acting for a request, read (and locked) in this transaction: a key revoked or expired
    meanwhile, or of a tenant suspended meanwhile, acts no more."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None or key.tenant_id != tenant.id or key.revoked_at is not None or tenant.status != "active":
        raise PermissionDenied("The key you act with is no longer active.", code="key_inactive")
    if key.expires_at is not None and key.expires_at <= now:
        raise PermissionDenied("The key you act with has expired.", code="key_inactive")
    return key


def _class_for(creator: ApiKey, asked: PriorityClass | None) -> PriorityClass:
    """The priority class of a key ``creator`` makes: what was asked, never above the creator's own (unasked: the
    creator's)."""
    own = _priority_class(creator.priority_class)
    if asked is None:
        return own
    if class_rank(asked) < class_rank(own):
        raise PermissionDenied(
            f"A key you make may not have a higher priority class than yours ({own}).",
            param="priority_class",
            code="key_broader_than_creator",
        )
    return asked


def _no_broader_than(
    creator: ApiKey, data: KeyCreate, expires_at: datetime | None
) -> tuple[list[str] | None, datetime | None]:
    """The models and expiry of a key ``creator`` makes: what was asked, within the creator's own (unasked: the
    creator's). Asking for more is refused."""
    models = data.allowed_models
    if creator.allowed_models is not None:
        if models is None:
            models = list(creator.allowed_models)
        elif not set(models) <= set(creator.allowed_models):
            raise PermissionDenied(
                "allowed_models names a model your key may not use; a key you make may only use models yours may.",
                param="allowed_models",
                code="key_broader_than_creator",
            )
    if creator.expires_at is not None:
        if expires_at is None:
            expires_at = creator.expires_at
        elif expires_at > creator.expires_at:
            raise PermissionDenied(
                f"A key you make may not outlive yours (it expires at {creator.expires_at.isoformat()}Z).",
                param="expires_at",
                code="key_broader_than_creator",
            )
    if data.key_manager and not creator.key_manager:
        raise PermissionDenied(
            "Only a key manager may make a key manager.", param="key_manager", code="key_broader_than_creator"
        )
    return models, expires_at


def _budgets_within(creator: ApiKey, asked: KeyBudgets) -> tuple[int | None, Decimal | None]:
    """The budgets of a key ``creator`` makes: what was asked, never above the creator's own (unasked: the
    creator's)."""
    chosen: list[int | Decimal | None] = []
    for name in ("monthly_token_budget", "monthly_cost_budget"):
        own, wanted = getattr(creator, name), getattr(asked, name)
        if own is not None and wanted is not None and wanted > own:
            raise PermissionDenied(
                f"A key you make may not have a larger {name} than yours ({own}).",
                param=name,
                code="key_broader_than_creator",
            )
        chosen.append(own if wanted is None else wanted)
    tokens, cost = chosen
    return (None if tokens is None else int(tokens)), (None if cost is None else Decimal(cost))


def _revoke_with_descendants(session: Session, key: ApiKey, actor: Actor, by_key: str | None, now: datetime) -> None:
    """Revoke ``key`` and every key made by it, or by those, at any depth (a key made by a revoked key would
    otherwise outlive the trust it was made with), each with its audit entry and its console sessions ended."""
    generation, seen = [key], {key.id}
    while generation:
        for revoked in generation:
            if revoked.revoked_at is None:
                revoked.revoked_at = now
                details = {"by_key": by_key} if revoked is key else {"by_key": by_key, "made_by_revoked": key.id}
                record(session, actor, "key.revoke", "api_key", revoked.id, revoked.tenant_id, details)
                end_sessions(session, actor, "key_revoked", ConsoleSession.subject == revoked.id, now)
        made = select(ApiKey).where(ApiKey.created_by_key_id.in_([k.id for k in generation]))
        generation = [child for child in session.scalars(made) if child.id not in seen]
        seen.update(child.id for child in generation)


def _prices_json(prices: dict[str, ModelPrice]) -> dict[str, dict[str, str]]:
    return {model: p.model_dump(mode="json", exclude_none=True) for model, p in prices.items()}


class TenancyService:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tenants ---------------------------------------------------------------------------------------
    def create_tenant(self, data: TenantCreate, actor: Actor = SYSTEM_ACTOR) -> TenantOut:
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
                record(session, actor, "tenant.create", "tenant", tenant.id, tenant.id, {"name": tenant.name})
        except IntegrityError as exc:
            raise ConflictError(f"A tenant named '{data.name}' already exists.", param="name") from exc
        return tenant_out(tenant)

    def list_tenants(self) -> list[TenantOut]:
        with self.db.session() as session:
            return [tenant_out(t) for t in session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id))]

    def get_tenant(self, ref: str) -> TenantOut:
        with self.db.session() as session:
            return tenant_out(self._find(session, ref))

    def update_tenant(self, ref: str, update: TenantUpdate, actor: Actor = SYSTEM_ACTOR) -> TenantOut:
        """Change the fields present in ``update``; audited as ``tenant.suspend`` or ``tenant.resume`` when the
        status changes, else ``tenant.update`` (naming the fields, not their values). Suspending ends the
        tenant's console sessions in the same transaction."""
        try:
            with self.db.session() as session:
                tenant = self._find(session, ref)
                status_before = tenant.status
                if update.status == "suspended":
                    where = ConsoleSession.tenant_id == tenant.id
                    end_sessions(session, actor, "tenant_suspended", where, utcnow())
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
                record(session, actor, action, "tenant", tenant.id, tenant.id, {"fields": fields})
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
    def create_key(
        self, ref: str, data: KeyCreate, *, actor: Actor = SYSTEM_ACTOR, by_key: str | None = None
    ) -> KeyCreated:
        """A new key of the tenant; ``by_key``: made by that key of the tenant (never broader than it)."""
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
            allowed_models = data.allowed_models
            priority_class: PriorityClass = data.priority_class or "interactive"
            budgets = data.monthly_token_budget, data.monthly_cost_budget
            if by_key is not None:
                creator = _acting_key(session, tenant, by_key, now)
                allowed_models, expires_at = _no_broader_than(creator, data, expires_at)
                priority_class = _class_for(creator, data.priority_class)
                budgets = _budgets_within(creator, data)
            key = ApiKey(
                id=new_id("key"),
                tenant_id=tenant.id,
                name=data.name,
                prefix=display_prefix(secret),
                key_hash=key_hash(secret),
                allowed_models=allowed_models,
                created_at=now,
                expires_at=expires_at,
                key_manager=data.key_manager,
                created_by_key_id=by_key,
                priority_class=priority_class,
                monthly_token_budget=budgets[0],
                monthly_cost_budget=budgets[1],
            )
            session.add(key)
            details = {
                "name": data.name,
                "key_manager": data.key_manager,
                "priority_class": priority_class,
                "by_key": by_key,
            }
            record(session, actor, "key.create", "api_key", key.id, tenant.id, details)
        return KeyCreated(**key_out(key, now).model_dump(), key=secret)

    def list_keys(self, ref: str) -> list[KeyOut]:
        with self.db.session() as session:
            tenant = self._find(session, ref)
            keys = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at))
            return [key_out(k) for k in keys]

    def key_labels(self, tenant_id: str | None = None) -> dict[str, str]:
        """Each key's id -> how people know it: its name and visible prefix ("ci · sk-AbCd…"), of one tenant or of
        every tenant (usage shows these, never the internal id)."""
        query = select(ApiKey.id, ApiKey.name, ApiKey.prefix)
        if tenant_id is not None:
            query = query.where(ApiKey.tenant_id == tenant_id)
        with self.db.session() as session:
            return {
                key_id: f"{name} · {prefix}…" if name else f"{prefix}…"
                for key_id, name, prefix in session.execute(query)
            }

    def revoke_key(self, ref: str, key_id: str, *, actor: Actor = SYSTEM_ACTOR, by_key: str | None = None) -> KeyOut:
        """Revoke a key of the tenant, the keys it made (and theirs), and end their console sessions; ``by_key``:
        asked by that key of the tenant (itself, or a key manager)."""
        now = utcnow()
        with self.db.session() as session:
            key = self._key_of(session, ref, key_id)
            tenant = key.tenant
            if by_key is not None and by_key != key.id and not _acting_key(session, tenant, by_key, now).key_manager:
                raise PermissionDenied(
                    "Only a key manager may revoke the organization's other keys; a key may revoke itself.",
                    param="key_id",
                    code="key_manager_required",
                )
            _revoke_with_descendants(session, key, actor, by_key, now)
            return key_out(key, now)

    def update_key(self, ref: str, key_id: str, update: KeyUpdate, actor: Actor = SYSTEM_ACTOR) -> KeyOut:
        """The operator changes the fields present in ``update`` (a key's name, its own budgets); audited as
        ``key.update`` naming the fields."""
        with self.db.session() as session:
            key = self._key_of(session, ref, key_id)
            for name in update.model_fields_set:
                value = getattr(update, name)
                if name == "name" and value is None:
                    raise InvalidRequestError("name cannot be null", param=name)
                setattr(key, name, value)
            fields = sorted(update.model_fields_set)
            record(session, actor, "key.update", "api_key", key.id, key.tenant_id, {"fields": fields})
            session.flush()
            return key_out(key)

    def _key_of(self, session: Session, ref: str, key_id: str) -> ApiKey:
        tenant = self._find(session, ref)
        key = session.get(ApiKey, key_id)
        if key is None or key.tenant_id != tenant.id:
            raise NotFoundError(f"No key '{key_id}' for tenant '{ref}'.", param="key_id")
        return key

    def record_last_used(self, times: dict[str, datetime]) -> None:
        """Write when keys were last used (``gateway.tenancy.key_activity``): one statement for all of them, and
        never a time older than the one stored (another gateway may have written a later one)."""
        table = cast(Table, ApiKey.__table__)
        stmt = (
            update(table)
            .where(table.c.id == bindparam("key"))
            .where(or_(table.c.last_used_at.is_(None), table.c.last_used_at < bindparam("at")))
            .values(last_used_at=bindparam("at"))
        )
        with self.db.session() as session:
            session.execute(stmt, [{"key": key, "at": at} for key, at in times.items()])

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
