"""The app's typed state (every resource the lifespan built) and the ``Annotated`` dependencies that hand its
parts, the request's context and its principal to routes, so no route reaches into an untyped ``app.state`` or
``request.state``. Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a
hop that costs more than these lookups.

Layering: this module imports the domains' services; the routers (``gateway.routes``) and the app's wiring sit
above it, and nothing below imports it back (``tests/test_layering.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, Request

from adapters.jobs import JobService
from engine.settings import EngineSettings
from gateway.accounting.admission import Admission
from gateway.accounting.pricing import PriceBook
from gateway.accounting.usage import UsageReports
from gateway.aliases.service import AliasService
from gateway.audit import Actor
from gateway.audit_log import AuditLog
from gateway.batches.service import BatchService
from gateway.context import RequestContext, context_of
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.evals.service import EvalService
from gateway.fine_tuning.files import FileStore
from gateway.idempotency import HEADER as IDEMPOTENCY_HEADER
from gateway.idempotency import KEY_DESCRIPTION, IdempotencyStore, IdempotentCreate, idempotent_create
from gateway.inference.catalog import ModelCatalog
from gateway.inference.runs import RequestCaps, Serving, disconnect_of
from gateway.inference.structured import StructuredOutputs
from gateway.ops.metrics import Metrics
from gateway.ops.minute_store import MinuteStore
from gateway.responses.store import ResponseStore
from gateway.scheduling.slots import Scheduler
from gateway.settings import GatewaySettings
from gateway.stored_completions.store import CompletionStore
from gateway.tenancy.access import AccessChanges
from gateway.tenancy.console_sessions import ConsoleSessions
from gateway.tenancy.key_cache import KeyCache
from gateway.tenancy.principal import (
    MISSING_TOKEN,
    Authenticator,
    MetricsReader,
    Operator,
    Principal,
    Realm,
    TenantPrincipal,
)
from gateway.tenancy.service import TenancyService
from gateway.tenancy.sign_in_throttle import SignInThrottle
from gateway.tenant_data.erasure import TenantEraser
from gateway.tenant_data.export import TenantExport
from gateway.webhooks.delivery import Deliverer
from gateway.webhooks.service import WebhookService
from gateway.workers import Workers

T = TypeVar("T")


@dataclass
class AppState:
    settings: GatewaySettings
    engine_settings: EngineSettings
    metrics: Metrics
    service_minutes: MinuteStore
    tenancy: TenancyService
    key_cache: KeyCache
    access: AccessChanges
    authenticator: Authenticator
    admission: Admission
    usage: UsageReports
    catalog: ModelCatalog
    caps: RequestCaps
    files: FileStore
    jobs: JobService
    evals: EvalService
    workers: Workers
    prices: PriceBook
    console_sessions: ConsoleSessions
    sign_in_throttle: SignInThrottle
    eraser: TenantEraser
    exports: TenantExport
    audit_log: AuditLog
    structured: StructuredOutputs
    responses: ResponseStore
    batches: BatchService
    scheduler: Scheduler
    idempotency: IdempotencyStore
    completions: CompletionStore
    webhooks: WebhookService
    webhook_delivery: Deliverer
    aliases: AliasService


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.llmaas
    return state


async def get_context(request: Request) -> RequestContext:
    return context_of(request.scope)


def _part(pick: Callable[[AppState], T]) -> Any:
    """A dependency that hands a route one part of the app's state."""

    async def part(request: Request) -> T:
        return pick(state_of(request.app))

    return Depends(part)


ContextDep = Annotated[RequestContext, Depends(get_context)]
SettingsDep = Annotated[GatewaySettings, _part(lambda state: state.settings)]
EngineSettingsDep = Annotated[EngineSettings, _part(lambda state: state.engine_settings)]
MetricsDep = Annotated[Metrics, _part(lambda state: state.metrics)]
ServiceMinutesDep = Annotated[MinuteStore, _part(lambda state: state.service_minutes)]
TenancyDep = Annotated[TenancyService, _part(lambda state: state.tenancy)]
AccessDep = Annotated[AccessChanges, _part(lambda state: state.access)]
AuthenticatorDep = Annotated[Authenticator, _part(lambda state: state.authenticator)]
AdmissionDep = Annotated[Admission, _part(lambda state: state.admission)]
UsageDep = Annotated[UsageReports, _part(lambda state: state.usage)]
CatalogDep = Annotated[ModelCatalog, _part(lambda state: state.catalog)]
FilesDep = Annotated[FileStore, _part(lambda state: state.files)]
JobsDep = Annotated[JobService, _part(lambda state: state.jobs)]
EvalsDep = Annotated[EvalService, _part(lambda state: state.evals)]
WorkersDep = Annotated[Workers, _part(lambda state: state.workers)]
PricesDep = Annotated[PriceBook, _part(lambda state: state.prices)]
ConsoleSessionsDep = Annotated[ConsoleSessions, _part(lambda state: state.console_sessions)]
SignInThrottleDep = Annotated[SignInThrottle, _part(lambda state: state.sign_in_throttle)]
EraserDep = Annotated[TenantEraser, _part(lambda state: state.eraser)]
ExportDep = Annotated[TenantExport, _part(lambda state: state.exports)]
AuditLogDep = Annotated[AuditLog, _part(lambda state: state.audit_log)]
ResponsesDep = Annotated[ResponseStore, _part(lambda state: state.responses)]
BatchesDep = Annotated[BatchService, _part(lambda state: state.batches)]
CompletionsDep = Annotated[CompletionStore, _part(lambda state: state.completions)]
WebhooksDep = Annotated[WebhookService, _part(lambda state: state.webhooks)]
WebhookDeliveryDep = Annotated[Deliverer, _part(lambda state: state.webhook_delivery)]
AliasesDep = Annotated[AliasService, _part(lambda state: state.aliases)]


# -- who the request acts for (the edge's authentication found it: ``gateway.edge.authentication``) -----------
def _principal(context: RequestContext) -> Principal:
    if context.principal is None:
        raise AuthenticationError(MISSING_TOKEN[Realm.TENANT])
    return context.principal


async def current_tenant(context: ContextDep) -> TenantPrincipal:
    principal = _principal(context)
    if not isinstance(principal, TenantPrincipal):
        raise PermissionDenied("This route needs a tenant's API key.", code="tenant_key_required")
    return principal


async def require_operator(context: ContextDep) -> None:
    if not isinstance(_principal(context), Operator):
        raise PermissionDenied("This route needs the admin key.", code="admin_key_required")


async def require_metrics_reader(context: ContextDep) -> None:
    if not isinstance(_principal(context), Operator | MetricsReader):
        raise PermissionDenied("/metrics needs the admin key or the metrics token.", code="metrics_token_required")


async def current_actor(context: ContextDep) -> Actor:
    return context.actor()


TenantDep = Annotated[TenantPrincipal, Depends(current_tenant)]
OperatorDep = Depends(require_operator)
MetricsReaderDep = Depends(require_metrics_reader)
ActorDep = Annotated[Actor, Depends(current_actor)]
"""Who acts, for the audit log: the request's principal, its id and the client's address."""


async def rate_limit_headers(context: ContextDep, tenant: TenantDep, admission: AdmissionDep) -> None:
    await admission.rate_headers(context, tenant)


RateLimitHeaders = Depends(rate_limit_headers)
"""Puts a tenant's current rate-limit headers on every response to it."""


async def get_serving(request: Request, context: ContextDep, tenant: TenantDep) -> Serving:
    state = state_of(request.app)
    return Serving(
        context,
        tenant,
        state.catalog,
        state.admission,
        state.caps,
        state.metrics,
        state.structured,
        state.scheduler,
        state.engine_settings.tool_call_parser,
        disconnect_of(request),
    )


ServingDep = Annotated[Serving, Depends(get_serving)]
"""What a generation route needs: the request's context and tenant, the catalog, admission, caps, metrics."""


async def get_idempotent(
    request: Request,
    tenant: TenantDep,
    key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER, description=KEY_DESCRIPTION)] = None,
) -> IdempotentCreate:
    return await idempotent_create(request, state_of(request.app).idempotency, tenant.tenant_id, key)


IdempotentDep = Annotated[IdempotentCreate, Depends(get_idempotent)]
"""A create route's ``Idempotency-Key``: ``await idempotent.once(create)`` creates at most once per key."""
