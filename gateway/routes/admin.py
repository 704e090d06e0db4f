"""The operator's API under ``/admin/v1``: tenants, quotas and API keys, a tenant's export, and the audit log
(read only: it has no route that changes it). Needs the admin key.

Database work runs in a worker thread; changes to keys and tenants go through ``gateway.tenancy.access`` (the
key cache is told after the commit)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from gateway import bounds
from gateway.audit_log import AuditFilters, AuditPage
from gateway.edge.strict_json import StrictJSONRoute
from gateway.state import AccessDep, ActorDep, AuditLogDep, CatalogDep, EraserDep, ExportDep, OperatorDep, TenancyDep
from gateway.tenancy.models import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyUpdate,
    TenantCreate,
    TenantDeleted,
    TenantList,
    TenantOut,
    TenantUpdate,
)
from gateway.tenant_data.export import archive_name

router = APIRouter(prefix="/admin/v1", dependencies=[OperatorDep], route_class=StrictJSONRoute, tags=["admin"])
_ARCHIVE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
}

TenantRef = Annotated[str, Path(max_length=bounds.TENANT_NAME, description="a tenant's name or id")]
KeyId = Annotated[str, Path(max_length=40)]


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, tenancy: TenancyDep, actor: ActorDep) -> TenantOut:
    return await run_in_threadpool(tenancy.create_tenant, body, actor)


@router.get("/tenants")
async def list_tenants(tenancy: TenancyDep) -> TenantList:
    return TenantList(data=await run_in_threadpool(tenancy.list_tenants))


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: TenantRef, tenancy: TenancyDep) -> TenantOut:
    return await run_in_threadpool(tenancy.get_tenant, tenant)


@router.patch("/tenants/{tenant}")
async def update_tenant(tenant: TenantRef, body: TenantUpdate, access: AccessDep, actor: ActorDep) -> TenantOut:
    return await access.update_tenant(tenant, body, actor)


@router.post("/tenants/{tenant}/suspend")
async def suspend_tenant(tenant: TenantRef, access: AccessDep, actor: ActorDep) -> TenantOut:
    return await access.update_tenant(tenant, TenantUpdate(status="suspended"), actor)


@router.post("/tenants/{tenant}/resume")
async def resume_tenant(tenant: TenantRef, access: AccessDep, actor: ActorDep) -> TenantOut:
    return await access.update_tenant(tenant, TenantUpdate(status="active"), actor)


@router.delete("/tenants/{tenant}")
async def delete_tenant(
    tenant: TenantRef, eraser: EraserDep, catalog: CatalogDep, access: AccessDep, actor: ActorDep
) -> TenantDeleted:
    """The tenant and everything it owns (files, fine-tuning jobs, adapters, evals, sessions, keys); its usage
    records and audit entries stay."""
    erased = await access.commit(partial(eraser.erase, tenant, actor), lambda erased: erased.tenant_id)
    await catalog.unload(erased.adapters)
    return TenantDeleted(id=erased.tenant_id, removed=erased.counts)


@router.get("/tenants/{tenant}/export", response_class=StreamingResponse, responses=_ARCHIVE)
async def export_tenant(tenant: TenantRef, exports: ExportDep, actor: ActorDep) -> StreamingResponse:
    """Everything the tenant owns as one tar.gz archive, streamed (see ``gateway.tenant_data.export``)."""
    tenant_id, name = await run_in_threadpool(exports.begin, tenant, actor)
    filename = archive_name(name, datetime.now(UTC))
    return StreamingResponse(
        exports.stream(tenant_id),
        media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/tenants/{tenant}/keys", status_code=201)
async def create_key(tenant: TenantRef, body: KeyCreate, access: AccessDep, actor: ActorDep) -> KeyCreated:
    return await access.create_key(tenant, body, actor)


@router.get("/tenants/{tenant}/keys")
async def list_keys(tenant: TenantRef, tenancy: TenancyDep) -> KeyList:
    return KeyList(data=await run_in_threadpool(tenancy.list_keys, tenant))


@router.patch("/tenants/{tenant}/keys/{key_id}")
async def update_key(tenant: TenantRef, key_id: KeyId, body: KeyUpdate, access: AccessDep, actor: ActorDep) -> KeyOut:
    """Change a key's name or its own monthly budgets (only the fields present; ``null`` removes a budget)."""
    return await access.update_key(tenant, key_id, body, actor)


@router.delete("/tenants/{tenant}/keys/{key_id}")
async def revoke_key(tenant: TenantRef, key_id: KeyId, access: AccessDep, actor: ActorDep) -> KeyOut:
    return await access.revoke_key(tenant, key_id, actor)


@router.get("/audit")
async def audit_log(log: AuditLogDep, filters: Annotated[AuditFilters, Depends()]) -> AuditPage:
    """Who did what, newest first (``after``: the previous page's ``last_id``). The log cannot be changed here."""
    return await run_in_threadpool(log.page, filters)
