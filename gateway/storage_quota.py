"""A tenant's storage quota: one "bytes used" that its files and its stored chat completions both count, the quota
that applies to it (its own, else the operator's default), and the one refusal (429) when something would pass it.
Files (``gateway.fine_tuning.files``), stored completions and their exports (``gateway.stored_completions``) all
check room here; a check that must hold against concurrent writers runs in a transaction that holds the tenant's
row lock (``gateway.tenancy.service.lock_live_tenant``)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.db import File, StoredCompletion
from gateway.errors import QuotaExceeded
from gateway.tenancy.principal import TenantPrincipal


def quota_of(tenant: TenantPrincipal, default: int) -> int:
    """The tenant's storage quota in bytes: its own, else ``default``."""
    quota = tenant.identity.quotas.max_storage_bytes
    return default if quota is None else quota


def used_bytes(session: Session, tenant_id: str) -> int:
    """What the tenant's storage quota counts: its files and its stored chat completions."""
    files = select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
    completions = select(func.coalesce(func.sum(StoredCompletion.bytes), 0)).where(
        StoredCompletion.tenant_id == tenant_id
    )
    return int(session.scalar(files) or 0) + int(session.scalar(completions) or 0)


def check_room(session: Session, tenant_id: str, incoming: int, quota: int, param: str) -> None:
    """Refuse (429) ``incoming`` more bytes that would pass ``quota``."""
    used = used_bytes(session, tenant_id)
    if used + incoming > quota:
        raise QuotaExceeded(
            f"This needs {incoming} bytes but your organization's files and stored chat completions already take "
            f"{used} of its {quota}-byte storage quota. Delete some or ask your operator for more.",
            param=param,
        )
