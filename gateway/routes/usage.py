"""Usage as tenants and the operator read it: ``GET /v1/usage`` (a tenant's own) and ``GET /admin/v1/usage``
(any tenant's, or all), with the same breakdown."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from gateway.accounting.schemas import CSV_RESPONSE, UsageReport
from gateway.accounting.usage import UsageFilters, parse_group_by, usage_response
from gateway.edge.strict_json import StrictJSONRoute
from gateway.state import OperatorDep, RateLimitHeaders, TenancyDep, TenantDep, UsageDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])
admin_router = APIRouter(prefix="/admin/v1", dependencies=[OperatorDep], route_class=StrictJSONRoute, tags=["admin"])
_REPORT: dict[str, Any] = {
    "response_model": UsageReport,
    "response_model_exclude_unset": True,
    "responses": CSV_RESPONSE,
}


@router.get("/v1/usage", **_REPORT)
async def own_usage(
    tenant: TenantDep,
    usage: UsageDep,
    filters: Annotated[UsageFilters, Depends()],
    group_by: Annotated[str, Query(max_length=64, description="comma-separated: key,model,kind")] = "key,model,kind",
) -> Response | UsageReport:
    fields = parse_group_by(group_by)
    report = await run_in_threadpool(usage.report, tenant.tenant_id, filters, fields)
    return usage_response(report, filters.format)


@admin_router.get("/usage", **_REPORT)
async def all_usage(
    usage: UsageDep,
    tenancy: TenancyDep,
    filters: Annotated[UsageFilters, Depends()],
    tenant: Annotated[str | None, Query(max_length=64, description="a tenant's name or id; all if omitted")] = None,
    group_by: Annotated[str, Query(max_length=64, description="comma-separated: tenant,key,model,kind")] = (
        "tenant,key,model,kind"
    ),
) -> Response | UsageReport:
    fields = parse_group_by(group_by)
    tenant_id = (await run_in_threadpool(tenancy.get_tenant, tenant)).id if tenant else None
    report = await run_in_threadpool(usage.report, tenant_id, filters, fields)
    return usage_response(report, filters.format)
