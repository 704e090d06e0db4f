"""``GET /v1/usage``: a tenant's own usage, with the same breakdown as the admin query."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.quota import QuotaDep
from gateway.routes.admin import parse_group_by, usage_response
from gateway.tenancy.service import Bucket

router = APIRouter()


@router.get("/v1/usage", response_model=None)
async def own_usage(
    request: Request,
    quota: QuotaDep,
    key_id: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Annotated[str, Query(description="comma-separated: key,model,kind")] = "key,model,kind",
    bucket: Bucket = "day",
    format: Literal["json", "csv"] = "json",
) -> Response | dict[str, Any]:
    report = await run_in_threadpool(
        quota.service.usage,
        tenant=quota.principal.tenant_id,
        key_id=key_id,
        model=model,
        since=since,
        until=until,
        group_by=parse_group_by(group_by),
        bucket=bucket,
    )
    return usage_response(report, format)
