"""The operator's API under ``/admin/v1``: tenants, quotas and API keys, a tenant's export, and the audit log
(read only: it has no route that changes it). Needs the admin key.

Database work runs in a worker thread; the key cache is told of a change on the event loop, after the change
is committed, so no lookup in flight can bring back what was just revoked or suspended."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from gateway import audit, bounds
from gateway.audit_log import AuditFilters, AuditPage
from gateway.edge.strict_json import StrictJSONRoute
from gateway.state import AuditLogDep, CatalogDep, EraserDep, ExportDep, KeyCacheDep, TenancyDep
from gateway.tenancy.export import archive_name
from gateway.tenancy.models import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    TenantCreate,
    TenantDeleted,
    TenantList,
    TenantOut,
    TenantUpdate,
)
from gateway.tenancy.principal import OperatorDep

router = APIRouter(prefix="/admin/v1", dependencies=[OperatorDep], route_class=StrictJSONRoute, tags=["admin"])
_ARCHIVE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
}

TenantRef = Annotated[str, Path(max_length=bounds.TENANT_NAME, description="a tenant's name or id")]
KeyId = Annotated[str, Path(max_length=40)]


def _operator(request: Request) -> audit.Actor:
    return audit.actor_of(request, audit.OPERATOR)


@router.post("/tenants", status_code=201)
async def create_tenant(request: Request, body: TenantCreate, tenancy: TenancyDep) -> TenantOut:
    return await run_in_threadpool(tenancy.create_tenant, body, _operator(request))


@router.get("/tenants")
async def list_tenants(tenancy: TenancyDep) -> TenantList:
    return TenantList(data=await run_in_threadpool(tenancy.list_tenants))


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: TenantRef, tenancy: TenancyDep) -> TenantOut:
    return await run_in_threadpool(tenancy.get_tenant, tenant)


@router.patch("/tenants/{tenant}")
async def update_tenant(
    request: Request, tenant: TenantRef, body: TenantUpdate, tenancy: TenancyDep, keys: KeyCacheDep
) -> TenantOut:
    updated = await run_in_threadpool(tenancy.update_tenant, tenant, body, _operator(request))
    keys.invalidate_tenant(updated.id)
    return updated


@router.post("/tenants/{tenant}/suspend")
async def suspend_tenant(request: Request, tenant: TenantRef, tenancy: TenancyDep, keys: KeyCacheDep) -> TenantOut:
    return await update_tenant(request, tenant, TenantUpdate(status="suspended"), tenancy, keys)


@router.post("/tenants/{tenant}/resume")
async def resume_tenant(request: Request, tenant: TenantRef, tenancy: TenancyDep, keys: KeyCacheDep) -> TenantOut:
    return await update_tenant(request, tenant, TenantUpdate(status="active"), tenancy, keys)


@router.delete("/tenants/{tenant}")
async def delete_tenant(
    request: Request, tenant: TenantRef, eraser: EraserDep, catalog: CatalogDep, keys: KeyCacheDep
) -> TenantDeleted:
    """The tenant and everything it owns (files, fine-tuning jobs, adapters, evals, sessions, keys); its usage
    records and audit entries stay."""
    erased = await run_in_threadpool(eraser.erase, tenant, _operator(request))
    keys.invalidate_tenant(erased.tenant_id)
    await catalog.unload(erased.adapters)
    return TenantDeleted(id=erased.tenant_id, removed=erased.counts)


@router.get("/tenants/{tenant}/export", response_class=StreamingResponse, responses=_ARCHIVE)
async def export_tenant(request: Request, tenant: TenantRef, exports: ExportDep) -> StreamingResponse:
    """Everything the tenant owns as one tar.gz archive, streamed (see ``gateway.tenancy.export``)."""
    tenant_id, name = await run_in_threadpool(exports.begin, tenant, _operator(request))
    filename = archive_name(name, datetime.now(UTC))
    return StreamingResponse(
        exports.stream(tenant_id),
        media_type="application/gzip",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/tenants/{tenant}/keys", status_code=201)
async def create_key(request: Request, tenant: TenantRef, body: KeyCreate, tenancy: TenancyDep) -> KeyCreated:
    return await run_in_threadpool(tenancy.create_key, tenant, body, actor=_operator(request))


@router.get("/tenants/{tenant}/keys")
async def list_keys(tenant: TenantRef, tenancy: TenancyDep) -> KeyList:
    return KeyList(data=await run_in_threadpool(tenancy.list_keys, tenant))


@router.delete("/tenants/{tenant}/keys/{key_id}")
async def revoke_key(
    request: Request, tenant: TenantRef, key_id: KeyId, tenancy: TenancyDep, keys: KeyCacheDep
) -> KeyOut:
    revoked = await run_in_threadpool(tenancy.revoke_key, tenant, key_id, actor=_operator(request))
    keys.invalidate_tenant(revoked.tenant_id)
    return revoked


@router.get("/audit")
async def audit_log(log: AuditLogDep, filters: Annotated[AuditFilters, Depends()]) -> AuditPage:
    """Who did what, newest first (``after``: the previous page's ``last_id``). The log cannot be changed here."""
    return await run_in_threadpool(log.page, filters)
