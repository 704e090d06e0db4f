"""``/v1/webhook_endpoints`` and ``/v1/webhook_event_types`` in OpenAI's shapes (the official SDKs'
``client.webhooks.create/retrieve/update/list/delete/rotate_secret/test`` and ``client.webhooks.event_types.list``),
with our extensions: ``enabled``, and ``GET /v1/webhook_endpoints/{id}/deliveries``; and the operator's view of a
tenant's endpoints under ``/admin/v1`` (list, pause or resume, delete). The domain is ``gateway.webhooks``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError
from gateway.state import (
    ActorDep,
    AdmissionDep,
    ContextDep,
    OperatorDep,
    RateLimitHeaders,
    TenantDep,
    WebhookDeliveryDep,
    WebhooksDep,
)
from gateway.webhooks.objects import (
    DeliveryList,
    EndpointCreate,
    EndpointDeleted,
    EndpointEnabled,
    EndpointList,
    EndpointOut,
    EndpointTest,
    EndpointTestResult,
    EndpointUpdate,
    EndpointWithSecret,
    EventTypeList,
    RotateSecret,
)

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders], tags=["webhooks"])
admin_router = APIRouter(prefix="/admin/v1", dependencies=[OperatorDep], route_class=StrictJSONRoute, tags=["admin"])

EndpointId = Annotated[str, Path(max_length=40)]
After = Annotated[str | None, Query(max_length=40)]
Limit = Annotated[int, Query(ge=1, le=100)]
TenantRef = Annotated[str, Path(max_length=bounds.TENANT_NAME, description="a tenant's name or id")]


@router.post("/v1/webhook_endpoints")
async def create_endpoint(
    body: EndpointCreate, tenant: TenantDep, webhooks: WebhooksDep, actor: ActorDep
) -> EndpointWithSecret:
    return await webhooks.create(tenant.tenant_id, body, actor)


@router.get("/v1/webhook_endpoints")
async def list_endpoints(
    tenant: TenantDep, webhooks: WebhooksDep, after: After = None, limit: Limit = 20
) -> EndpointList:
    return await run_in_threadpool(webhooks.list, tenant.tenant_id, after, limit)


@router.get("/v1/webhook_endpoints/{webhook_endpoint_id}")
async def retrieve_endpoint(webhook_endpoint_id: EndpointId, tenant: TenantDep, webhooks: WebhooksDep) -> EndpointOut:
    return await run_in_threadpool(webhooks.get, tenant.tenant_id, webhook_endpoint_id)


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}")
async def update_endpoint(
    webhook_endpoint_id: EndpointId, body: EndpointUpdate, tenant: TenantDep, webhooks: WebhooksDep, actor: ActorDep
) -> EndpointOut:
    return await webhooks.update(tenant.tenant_id, webhook_endpoint_id, body, actor)


@router.delete("/v1/webhook_endpoints/{webhook_endpoint_id}")
async def delete_endpoint(
    webhook_endpoint_id: EndpointId, tenant: TenantDep, webhooks: WebhooksDep, actor: ActorDep
) -> EndpointDeleted:
    return await run_in_threadpool(webhooks.delete, tenant.tenant_id, webhook_endpoint_id, actor)


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret")
async def rotate_secret(
    webhook_endpoint_id: EndpointId, tenant: TenantDep, webhooks: WebhooksDep, actor: ActorDep, body: RotateSecret
) -> EndpointWithSecret:
    keep = body.keep_old_secret_active_for_24_hours
    return await run_in_threadpool(webhooks.rotate, tenant.tenant_id, webhook_endpoint_id, keep, actor)


@router.post("/v1/webhook_endpoints/{webhook_endpoint_id}/test")
async def test_endpoint(
    webhook_endpoint_id: EndpointId,
    body: EndpointTest,
    context: ContextDep,
    tenant: TenantDep,
    admission: AdmissionDep,
    webhooks: WebhooksDep,
    delivery: WebhookDeliveryDep,
) -> EndpointTestResult:
    """Sends one sample event now; counts as a request of the tenant's RPM window (it makes us send one)."""
    await admission.admit_request(context, tenant)
    signing = await run_in_threadpool(webhooks.signing, tenant.tenant_id, webhook_endpoint_id)
    status, error = await delivery.test(signing, body.event_type)
    if status is None:
        raise InvalidRequestError(f"The test event was not delivered. {error}", code="webhook_unreachable")
    return EndpointTestResult(webhook_endpoint_id=webhook_endpoint_id, event_type=body.event_type, status_code=status)


@router.get("/v1/webhook_endpoints/{webhook_endpoint_id}/deliveries")
async def list_deliveries(
    webhook_endpoint_id: EndpointId, tenant: TenantDep, webhooks: WebhooksDep, after: After = None, limit: Limit = 20
) -> DeliveryList:
    return await run_in_threadpool(webhooks.deliveries, tenant.tenant_id, webhook_endpoint_id, after, limit)


@router.get("/v1/webhook_event_types")
async def list_event_types(tenant: TenantDep, webhooks: WebhooksDep) -> EventTypeList:
    return webhooks.event_types()


@admin_router.get("/tenants/{tenant}/webhook_endpoints")
async def admin_list_endpoints(
    tenant: TenantRef, webhooks: WebhooksDep, after: After = None, limit: Limit = 20
) -> EndpointList:
    tenant_id = await run_in_threadpool(webhooks.tenant_id_of, tenant)
    return await run_in_threadpool(webhooks.list, tenant_id, after, limit)


@admin_router.post("/tenants/{tenant}/webhook_endpoints/{webhook_endpoint_id}")
async def admin_pause_endpoint(
    tenant: TenantRef, webhook_endpoint_id: EndpointId, body: EndpointEnabled, webhooks: WebhooksDep, actor: ActorDep
) -> EndpointOut:
    tenant_id = await run_in_threadpool(webhooks.tenant_id_of, tenant)
    return await run_in_threadpool(webhooks.pause, tenant_id, webhook_endpoint_id, body.enabled, actor)


@admin_router.delete("/tenants/{tenant}/webhook_endpoints/{webhook_endpoint_id}")
async def admin_delete_endpoint(
    tenant: TenantRef, webhook_endpoint_id: EndpointId, webhooks: WebhooksDep, actor: ActorDep
) -> EndpointDeleted:
    tenant_id = await run_in_threadpool(webhooks.tenant_id_of, tenant)
    return await run_in_threadpool(webhooks.delete, tenant_id, webhook_endpoint_id, actor)
