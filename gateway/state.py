"""The app's typed state (every resource the lifespan built) and the ``Annotated`` dependencies that hand its
parts to routes, so no route reaches into an untyped ``app.state``. Dependencies are ``async def``: FastAPI
runs a plain ``def`` dependency in a worker thread, a hop that costs more than these lookups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request

from adapters.jobs import JobService
from engine.settings import EngineSettings
from gateway.accounting.admission import Admission
from gateway.accounting.pricing import PriceBook
from gateway.accounting.usage import UsageReports
from gateway.audit_log import AuditLog
from gateway.console.sessions import ConsoleSessions
from gateway.console.throttle import SignInThrottle
from gateway.edge.request_context import RequestContext
from gateway.evals.service import EvalService
from gateway.fine_tuning.files import FileStore
from gateway.inference.catalog import ModelCatalog
from gateway.inference.runs import RequestCaps, Serving
from gateway.ops.metrics import Metrics
from gateway.settings import GatewaySettings
from gateway.tenancy.erasure import TenantEraser
from gateway.tenancy.export import TenantExport
from gateway.tenancy.key_cache import KeyCache
from gateway.tenancy.principal import Authenticator, TenantDep
from gateway.tenancy.service import TenancyService
from gateway.workers import Workers

T = TypeVar("T")


@dataclass
class AppState:
    settings: GatewaySettings
    engine_settings: EngineSettings
    metrics: Metrics
    tenancy: TenancyService
    key_cache: KeyCache
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


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.llmaas
    return state


async def get_context(request: Request) -> RequestContext:
    context: RequestContext = request.state.context
    return context


def _part(pick: Callable[[AppState], T]) -> Any:
    """A dependency that hands a route one part of the app's state."""

    async def part(request: Request) -> T:
        return pick(state_of(request.app))

    return Depends(part)


ContextDep = Annotated[RequestContext, Depends(get_context)]
SettingsDep = Annotated[GatewaySettings, _part(lambda state: state.settings)]
EngineSettingsDep = Annotated[EngineSettings, _part(lambda state: state.engine_settings)]
MetricsDep = Annotated[Metrics, _part(lambda state: state.metrics)]
TenancyDep = Annotated[TenancyService, _part(lambda state: state.tenancy)]
KeyCacheDep = Annotated[KeyCache, _part(lambda state: state.key_cache)]
AdmissionDep = Annotated[Admission, _part(lambda state: state.admission)]
UsageDep = Annotated[UsageReports, _part(lambda state: state.usage)]
CatalogDep = Annotated[ModelCatalog, _part(lambda state: state.catalog)]
FilesDep = Annotated[FileStore, _part(lambda state: state.files)]
JobsDep = Annotated[JobService, _part(lambda state: state.jobs)]
EvalsDep = Annotated[EvalService, _part(lambda state: state.evals)]
WorkersDep = Annotated[Workers, _part(lambda state: state.workers)]
EraserDep = Annotated[TenantEraser, _part(lambda state: state.eraser)]
ExportDep = Annotated[TenantExport, _part(lambda state: state.exports)]
AuditLogDep = Annotated[AuditLog, _part(lambda state: state.audit_log)]


async def get_serving(request: Request, context: ContextDep, tenant: TenantDep) -> Serving:
    state = state_of(request.app)
    return Serving(context, tenant, state.catalog, state.admission, state.caps, state.metrics)


ServingDep = Annotated[Serving, Depends(get_serving)]
"""What a generation route needs: the request's context and tenant, the catalog, admission, caps, metrics."""
