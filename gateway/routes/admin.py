"""The operator's API under ``/admin/v1``: tenants, quotas, API keys and usage. Needs the admin key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from gateway.auth import AdminDep, KeyCache
from gateway.tenancy.models import KeyCreate, KeyCreated, KeyOut, TenantCreate, TenantOut, TenantUpdate
from gateway.tenancy.service import TenancyService
from gateway.usage_reports import UsageFilters, usage_report

router = APIRouter(prefix="/admin/v1", dependencies=[AdminDep], tags=["admin"])


def _service(request: Request) -> TenancyService:
    return request.app.state.tenancy  # type: ignore[no-any-return]


def _cache(request: Request) -> KeyCache:
    return request.app.state.key_cache  # type: ignore[no-any-return]


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantCreate, request: Request) -> TenantOut:
    return _service(request).create_tenant(body)


@router.get("/tenants")
def list_tenants(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _service(request).list_tenants()}


@router.get("/tenants/{tenant}")
def get_tenant(tenant: str, request: Request) -> TenantOut:
    return _service(request).get_tenant(tenant)


@router.patch("/tenants/{tenant}")
def update_tenant(tenant: str, body: TenantUpdate, request: Request) -> TenantOut:
    updated = _service(request).update_tenant(tenant, body)
    _cache(request).forget_tenant(updated.id)
    return updated


@router.post("/tenants/{tenant}/suspend")
def suspend_tenant(tenant: str, request: Request) -> TenantOut:
    return update_tenant(tenant, TenantUpdate(status="suspended"), request)


@router.post("/tenants/{tenant}/resume")
def resume_tenant(tenant: str, request: Request) -> TenantOut:
    return update_tenant(tenant, TenantUpdate(status="active"), request)


@router.delete("/tenants/{tenant}")
def delete_tenant(tenant: str, request: Request) -> dict[str, Any]:
    tenant_id = _service(request).delete_tenant(tenant)
    _cache(request).forget_tenant(tenant_id)
    return {"id": tenant_id, "object": "tenant", "deleted": True}


@router.post("/tenants/{tenant}/keys", status_code=201)
def create_key(tenant: str, body: KeyCreate, request: Request) -> KeyCreated:
    return _service(request).create_key(tenant, body)


@router.get("/tenants/{tenant}/keys")
def list_keys(tenant: str, request: Request) -> dict[str, Any]:
    return {"object": "list", "data": _service(request).list_keys(tenant)}


@router.delete("/tenants/{tenant}/keys/{key_id}")
def revoke_key(tenant: str, key_id: str, request: Request) -> KeyOut:
    revoked = _service(request).revoke_key(tenant, key_id)
    _cache(request).forget_tenant(revoked.tenant_id)
    return revoked


@router.get("/usage", response_model=None)
def usage(
    request: Request,
    filters: Annotated[UsageFilters, Depends()],
    tenant: str | None = None,
    group_by: Annotated[str, Query(description="comma-separated: tenant,key,model,kind")] = "tenant,key,model,kind",
) -> Response | dict[str, Any]:
    return usage_report(_service(request), tenant, filters, group_by)
