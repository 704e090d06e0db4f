"""The operator's console pages under ``/console/admin``: tenants (with the models some tenant is billed nothing
for) and each tenant's page (quotas, weight, prices, keys), the service page and what it polls, every tenant's
usage this month, tenants' aliases, and the audit log (read only)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.audit_log import AuditFilters
from gateway.errors import NotFoundError
from gateway.ops.snapshot import service_snapshot
from gateway.routes.console.pages import SECURITY_HEADERS, csv_download, page, script_json
from gateway.routes.console.usage_view import UsageViewDep
from gateway.routes.console.visits import OperatorVisitDep
from gateway.state import (
    AuditLogDep,
    CatalogDep,
    JobsDep,
    MetricsDep,
    PricesDep,
    ServiceMinutesDep,
    TenancyDep,
)

router = APIRouter(prefix="/console/admin")


@router.get("/tenants")
async def tenants_page(
    request: Request, visit: OperatorVisitDep, tenancy: TenancyDep, prices: PricesDep, catalog: CatalogDep
) -> HTMLResponse:
    tenants = await run_in_threadpool(tenancy.list_tenants)
    unpriced: dict[str, list[str]] = {}  # model -> the tenants billed 0 for it: the operator should price it
    for tenant in tenants:
        for model in prices.unpriced(tenant.model_prices, catalog.base_ids()):
            unpriced.setdefault(model, []).append(tenant.name)
    return page(request, "tenants.html", session=visit.session, tenants=tenants, unpriced=unpriced)


@router.get("/tenants/{tenant}")
async def tenant_page(
    request: Request,
    visit: OperatorVisitDep,
    tenant: Annotated[str, Path(max_length=bounds.TENANT_NAME)],
    tenancy: TenancyDep,
    prices: PricesDep,
    catalog: CatalogDep,
) -> HTMLResponse:
    """One tenant: its quotas, weight, prices and keys, and what the operator does to them (the page's script
    calls the admin API)."""
    try:
        found = await run_in_threadpool(tenancy.get_tenant, tenant)
    except NotFoundError as exc:
        return page(request, "refused.html", 404, session=visit.session, reason=exc.message)
    keys = await run_in_threadpool(tenancy.list_keys, found.id)
    models = catalog.base_ids()
    listing: dict[str, Any] = {
        "tenant": found,
        "keys": keys,
        "price_models": sorted({*models, *found.model_prices}),
        "unpriced": prices.unpriced(found.model_prices, models),
    }
    return page(request, "tenant.html", session=visit.session, **listing)


@router.get("/service")
async def service_page(request: Request, visit: OperatorVisitDep) -> HTMLResponse:
    return page(request, "service.html", session=visit.session)


@router.get("/service.json")
async def service_state(
    visit: OperatorVisitDep, metrics: MetricsDep, minutes: ServiceMinutesDep, jobs: JobsDep
) -> Response:
    """What the service page polls: the metrics registry's snapshot (this gateway since it started), the rolling
    windows of every gateway (``recent``) and the fine-tuning queue."""
    snapshot = service_snapshot(metrics.registry)
    snapshot["recent"] = await run_in_threadpool(minutes.recent)
    snapshot["fine_tuning_queue"] = await run_in_threadpool(jobs.queue)
    return Response(json.dumps(snapshot), media_type="application/json", headers=SECURITY_HEADERS)


@router.get("/usage")
async def all_usage_page(request: Request, visit: OperatorVisitDep, view: UsageViewDep) -> HTMLResponse:
    """Every tenant's usage this month: charts per tenant and day, the table by tenant and model, a CSV."""
    shown = await run_in_threadpool(view.operator_page, datetime.now(UTC))
    chart = shown["chart"]
    return page(
        request,
        "all_usage.html",
        session=visit.session,
        report=shown["report"],
        chart=chart,
        chart_json=script_json(chart),
    )


@router.get("/usage.csv")
async def all_usage_csv(visit: OperatorVisitDep, view: UsageViewDep) -> Response:
    return csv_download(await run_in_threadpool(view.operator_csv))


@router.get("/aliases")
async def aliases_page(request: Request, visit: OperatorVisitDep, tenancy: TenancyDep) -> HTMLResponse:
    """Every tenant's aliases, one tenant at a time, read by the page's script from the admin API."""
    tenants = await run_in_threadpool(tenancy.list_tenants)
    api_base = "/admin/v1/tenants/{tenant}/aliases"
    return page(request, "aliases.html", session=visit.session, tenants=tenants, api_base=api_base)


@router.get("/audit")
async def audit_page(
    request: Request,
    visit: OperatorVisitDep,
    log: AuditLogDep,
    tenancy: TenancyDep,
    filters: Annotated[AuditFilters, Depends()],
) -> HTMLResponse:
    """The audit log, newest first, a page at a time (read only, as everywhere)."""
    entries = await run_in_threadpool(log.page, filters)
    tenants = {t.id: t.name for t in await run_in_threadpool(tenancy.list_tenants)}
    query = {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in asdict(filters).items()
        if value not in (None, "")
    }
    older_url = f"/console/admin/audit?{urlencode({**query, 'after': entries.last_id})}"
    listing: dict[str, Any] = {"page": entries, "filters": filters, "tenant_names": tenants, "older_url": older_url}
    return page(request, "audit.html", session=visit.session, **listing)
