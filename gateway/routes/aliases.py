"""Model aliases over HTTP: the tenant's own (``/v1/aliases``, our extension of the OpenAI API; reading needs any
key, changing a key manager's) and the operator's (``/admin/v1/tenants/{tenant}/aliases``). One call moves an alias
(``POST .../{name}``), one rolls it back (``POST .../{name}/rollback``); ``GET .../{name}/history`` lists its
versions. The rules are ``gateway.aliases.service``'s."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.aliases.models import AliasCreate, AliasDeleted, AliasHistory, AliasList, AliasOut, AliasSetting
from gateway.edge.strict_json import StrictJSONRoute
from gateway.routes.admin import TenantRef
from gateway.state import ActorDep, AliasesDep, OperatorDep, RateLimitHeaders, TenancyDep, TenantDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders], tags=["aliases"])
admin_router = APIRouter(
    prefix="/admin/v1/tenants/{tenant}", dependencies=[OperatorDep], route_class=StrictJSONRoute, tags=["admin"]
)

AliasPath = Annotated[str, Path(max_length=bounds.ALIAS_NAME, description="the alias's name")]


# -- the tenant's ---------------------------------------------------------------------------------------------------
@router.get("/v1/aliases")
async def list_aliases(tenant: TenantDep, aliases: AliasesDep) -> AliasList:
    return await run_in_threadpool(aliases.list, tenant.tenant_id, tenant)


@router.post("/v1/aliases", status_code=201)
async def create_alias(body: AliasCreate, tenant: TenantDep, aliases: AliasesDep, actor: ActorDep) -> AliasOut:
    return await aliases.create(tenant.tenant_id, body, actor, tenant)


@router.get("/v1/aliases/{name}")
async def retrieve_alias(name: AliasPath, tenant: TenantDep, aliases: AliasesDep) -> AliasOut:
    return await run_in_threadpool(aliases.get, tenant.tenant_id, name, tenant)


@router.post("/v1/aliases/{name}")
async def move_alias(
    name: AliasPath, body: AliasSetting, tenant: TenantDep, aliases: AliasesDep, actor: ActorDep
) -> AliasOut:
    return await aliases.move(tenant.tenant_id, name, body, actor, tenant)


@router.post("/v1/aliases/{name}/rollback")
async def roll_back_alias(name: AliasPath, tenant: TenantDep, aliases: AliasesDep, actor: ActorDep) -> AliasOut:
    return await aliases.rollback(tenant.tenant_id, name, actor, tenant)


@router.get("/v1/aliases/{name}/history")
async def alias_history(name: AliasPath, tenant: TenantDep, aliases: AliasesDep) -> AliasHistory:
    return await run_in_threadpool(aliases.history, tenant.tenant_id, name, tenant)


@router.delete("/v1/aliases/{name}")
async def delete_alias(name: AliasPath, tenant: TenantDep, aliases: AliasesDep, actor: ActorDep) -> AliasDeleted:
    return await aliases.delete(tenant.tenant_id, name, actor, tenant)


# -- the operator's -------------------------------------------------------------------------------------------------
async def _tenant_id(tenant: TenantRef, tenancy: TenancyDep) -> str:
    return (await run_in_threadpool(tenancy.get_tenant, tenant)).id


TenantId = Annotated[str, Depends(_tenant_id)]
"""The id of the tenant the path names (by name or id); a 404 naming ``tenant`` if none."""


@admin_router.get("/aliases")
async def admin_list_aliases(tenant_id: TenantId, aliases: AliasesDep) -> AliasList:
    return await run_in_threadpool(aliases.list, tenant_id)


@admin_router.post("/aliases", status_code=201)
async def admin_create_alias(tenant_id: TenantId, body: AliasCreate, aliases: AliasesDep, actor: ActorDep) -> AliasOut:
    return await aliases.create(tenant_id, body, actor)


@admin_router.get("/aliases/{name}")
async def admin_retrieve_alias(tenant_id: TenantId, name: AliasPath, aliases: AliasesDep) -> AliasOut:
    return await run_in_threadpool(aliases.get, tenant_id, name)


@admin_router.post("/aliases/{name}")
async def admin_move_alias(
    tenant_id: TenantId, name: AliasPath, body: AliasSetting, aliases: AliasesDep, actor: ActorDep
) -> AliasOut:
    return await aliases.move(tenant_id, name, body, actor)


@admin_router.post("/aliases/{name}/rollback")
async def admin_roll_back_alias(tenant_id: TenantId, name: AliasPath, aliases: AliasesDep, actor: ActorDep) -> AliasOut:
    return await aliases.rollback(tenant_id, name, actor)


@admin_router.get("/aliases/{name}/history")
async def admin_alias_history(tenant_id: TenantId, name: AliasPath, aliases: AliasesDep) -> AliasHistory:
    return await run_in_threadpool(aliases.history, tenant_id, name)


@admin_router.delete("/aliases/{name}")
async def admin_delete_alias(
    tenant_id: TenantId, name: AliasPath, aliases: AliasesDep, actor: ActorDep
) -> AliasDeleted:
    return await aliases.delete(tenant_id, name, actor)
