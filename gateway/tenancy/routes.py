"""The operator's API under ``/admin/v1``: tenants, quotas and API keys. Needs the admin key.

Database work runs in a worker thread; the key cache is told of a change on the event loop, after the change
is committed, so no lookup in flight can bring back what was just revoked or suspended."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.audit import OPERATOR, actor_of
from gateway.edge.strict_json import StrictJSONRoute
from gateway.state import KeyCacheDep, TenancyDep
from gateway.tenancy.models import KeyCreate, KeyCreated, KeyOut, TenantCreate, TenantOut, TenantUpdate
from gateway.tenancy.principal import OperatorDep

router = APIRouter(prefix="/admin/v1", dependencies=[OperatorDep], route_class=StrictJSONRoute, tags=["admin"])

TenantRef = Annotated[str, Path(max_length=bounds.TENANT_NAME, description="a tenant's name or id")]
KeyId = Annotated[str, Path(max_length=40)]


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, tenancy: TenancyDep) -> TenantOut:
    return await run_in_threadpool(tenancy.create_tenant, body)


@router.get("/tenants")
async def list_tenants(tenancy: TenancyDep) -> dict[str, Any]:
    return {"object": "list", "data": await run_in_threadpool(tenancy.list_tenants)}


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: TenantRef, tenancy: TenancyDep) -> TenantOut:
    return await run_in_threadpool(tenancy.get_tenant, tenant)


@router.patch("/tenants/{tenant}")
async def update_tenant(
    request: Request, tenant: TenantRef, body: TenantUpdate, tenancy: TenancyDep, keys: KeyCacheDep
) -> TenantOut:
    updated = await run_in_threadpool(tenancy.update_tenant, tenant, body, actor=actor_of(request, OPERATOR))
    keys.invalidate_tenant(updated.id)
    return updated


@router.post("/tenants/{tenant}/suspend")
async def suspend_tenant(request: Request, tenant: TenantRef, tenancy: TenancyDep, keys: KeyCacheDep) -> TenantOut:
    return await update_tenant(request, tenant, TenantUpdate(status="suspended"), tenancy, keys)


@router.post("/tenants/{tenant}/resume")
async def resume_tenant(request: Request, tenant: TenantRef, tenancy: TenancyDep, keys: KeyCacheDep) -> TenantOut:
    return await update_tenant(request, tenant, TenantUpdate(status="active"), tenancy, keys)


@router.delete("/tenants/{tenant}")
async def delete_tenant(request: Request, tenant: TenantRef, tenancy: TenancyDep, keys: KeyCacheDep) -> dict[str, Any]:
    tenant_id = await run_in_threadpool(tenancy.delete_tenant, tenant, actor=actor_of(request, OPERATOR))
    keys.invalidate_tenant(tenant_id)
    return {"id": tenant_id, "object": "tenant", "deleted": True}


@router.post("/tenants/{tenant}/keys", status_code=201)
async def create_key(request: Request, tenant: TenantRef, body: KeyCreate, tenancy: TenancyDep) -> KeyCreated:
    return await run_in_threadpool(tenancy.create_key, tenant, body, actor=actor_of(request, OPERATOR))


@router.get("/tenants/{tenant}/keys")
async def list_keys(tenant: TenantRef, tenancy: TenancyDep) -> dict[str, Any]:
    return {"object": "list", "data": await run_in_threadpool(tenancy.list_keys, tenant)}


@router.delete("/tenants/{tenant}/keys/{key_id}")
async def revoke_key(
    request: Request, tenant: TenantRef, key_id: KeyId, tenancy: TenancyDep, keys: KeyCacheDep
) -> KeyOut:
    revoked = await run_in_threadpool(tenancy.revoke_key, tenant, key_id, actor=actor_of(request, OPERATOR))
    keys.invalidate_tenant(revoked.tenant_id)
    return revoked
