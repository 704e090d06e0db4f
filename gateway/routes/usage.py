"""``GET /v1/usage``: a tenant's own usage, with the same breakdown as the admin query."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from gateway.quota import QuotaDep
from gateway.usage_reports import UsageFilters, usage_report

router = APIRouter()


@router.get("/v1/usage", response_model=None)
async def own_usage(
    quota: QuotaDep,
    filters: Annotated[UsageFilters, Depends()],
    group_by: Annotated[str, Query(description="comma-separated: key,model,kind")] = "key,model,kind",
) -> Response | dict[str, Any]:
    return await run_in_threadpool(usage_report, quota.service, quota.principal.tenant_id, filters, group_by)
