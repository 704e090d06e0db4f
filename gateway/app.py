"""The app factory: settings in, a FastAPI app out. Every resource (database, ledger writer, limiter, engine) is
built in the lifespan, never at import, and released in reverse order when the app stops; the bootstrap
(``gateway.bootstrap``: migrations, admin key) is done once, by ``llmaas serve`` before the app or else here.

A request passes, outermost first: ``CORSMiddleware`` (only with ``LLMAAS_CORS_ORIGINS``: answers browsers'
preflights) → ``RequestContextMiddleware`` (server-minted id, client id check, access
log, HTTP metrics) → ``AuthenticationMiddleware`` (bearer token → principal, before any body is read) →
``BodyLimitMiddleware`` (413 past the route's cap) → ``BodyReadTimeoutMiddleware`` (408 for a body that does not
arrive in time) → the route (typed dependencies: principal, admission, catalog) → the engine → the settlement of
its reservation → the ledger. Below the app, uvicorn's HTTP protocol limits connections
(``gateway.edge.connections``: header timeout and size, connections per address)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from adapters.adapter_store import SharedDirectory
from adapters.jobs import JobService, OnFinal
from adapters.registry import AdapterRegistry
from engine.backend import BackendFactory, BackendStatus
from engine.factory import build_backend
from engine.settings import DEFAULT_MODEL_ID, EngineSettings
from gateway.accounting.admission import Admission
from gateway.accounting.ledger import LedgerWriter
from gateway.accounting.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.accounting.pricing import PriceBook
from gateway.accounting.records import UsageLedger
from gateway.accounting.tasks import SettlementTasks
from gateway.accounting.training_billing import TrainingBilling, job_charger
from gateway.accounting.usage import UsageReports
from gateway.aliases.service import AliasService
from gateway.audit_log import AuditLog
from gateway.batches.queue import BatchQueue
from gateway.batches.runner import BatchRunner, ServingParts
from gateway.batches.service import BatchService
from gateway.bootstrap import Bootstrapped, bootstrap
from gateway.db import Database
from gateway.edge.authentication import AuthenticationMiddleware
from gateway.edge.body_limits import BodyLimitMiddleware
from gateway.edge.body_timeout import BodyReadTimeoutMiddleware
from gateway.edge.request_context import RequestContextMiddleware
from gateway.errors import install_error_handlers
from gateway.evals.queue import RunQueue
from gateway.evals.runner import EvalRunner
from gateway.evals.service import EvalService
from gateway.fine_tuning.files import FileStore
from gateway.idempotency import IdempotencyStore
from gateway.inference.aliases import AliasBook
from gateway.inference.catalog import ModelCatalog
from gateway.inference.grammar_pool import GrammarPool
from gateway.inference.runs import RequestCaps
from gateway.inference.structured import StructuredOutputs
from gateway.ops.api_docs import install_api_docs
from gateway.ops.metrics import Metrics
from gateway.ops.minute_store import FLUSH_SECONDS, MinuteStore
from gateway.private_files import keep_private, private_dir
from gateway.responses.store import ResponseStore
from gateway.retention import Retention
from gateway.routes import chat, completions, embeddings, install_routes
from gateway.scheduling.capacity import engine_capacity
from gateway.scheduling.memory import MemoryScheduler
from gateway.scheduling.redis import RedisScheduler
from gateway.scheduling.slots import QueueLimits, Scheduler
from gateway.settings import GatewaySettings
from gateway.state import AppState, state_of
from gateway.stored_completions.store import CompletionStore
from gateway.tenancy.access import AccessChanges
from gateway.tenancy.console_sessions import ConsoleSessions
from gateway.tenancy.key_activity import KeyActivity
from gateway.tenancy.key_cache import KeyCache
from gateway.tenancy.keys import new_id
from gateway.tenancy.principal import Authenticator
from gateway.tenancy.service import TenancyService
from gateway.tenancy.sign_in_throttle import sign_in_throttle
from gateway.tenant_data.erasure import TenantEraser
from gateway.tenant_data.export import TenantExport
from gateway.webhooks.delivery import Deliverer
from gateway.webhooks.destinations import Destinations
from gateway.webhooks.events import fine_tuning_job_hook
from gateway.webhooks.outbox import Backoff, Outbox
from gateway.webhooks.secrets import SecretBox
from gateway.webhooks.service import WebhookService
from gateway.workers import Workers

EXPOSED_HEADERS = [
    "x-request-id",
    "x-client-request-id",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "retry-after-ms",
]
"""Response headers a page on another origin may read (a browser hides all others)."""


def adapter_registry(database: Database, settings: GatewaySettings) -> AdapterRegistry:
    return AdapterRegistry(database.sessions, private_dir(settings.data_dir / "adapters"))


def file_store(database: Database, settings: GatewaySettings) -> FileStore:
    return FileStore(database, settings.data_dir / "files")


def price_book(settings: GatewaySettings) -> PriceBook:
    return PriceBook(
        settings.default_model_prices,
        cached_input_fraction=settings.cached_input_price_fraction,
        batch_fraction=settings.batch_price_fraction,
    )


def job_hook(prices: PriceBook) -> OnFinal:
    """What moving a job into a final status does in that transaction (the API's and the worker's moves): charge
    it and write its webhook event."""
    return fine_tuning_job_hook(job_charger(prices))


def job_service(database: Database, prices: PriceBook) -> JobService:
    return JobService(database.sessions, on_final=job_hook(prices))


def build_webhooks(
    settings: GatewaySettings, database: Database, draining: Callable[[], bool]
) -> tuple[WebhookService, Deliverer]:
    """The tenants' webhook endpoints, and this gateway's delivery loop (started by the caller)."""
    destinations = Destinations(settings.webhook_allow_private, tuple(settings.webhook_allowed_hosts))
    box = SecretBox.of(settings.webhook_secrets_key, settings.data_dir)
    service = WebhookService(database, box, destinations, settings.webhook_max_endpoints)
    shared = settings.database_url is not None and not settings.database_url.startswith("sqlite")
    service.check_key(settings.webhook_secrets_key is not None, shared)
    backoff = Backoff(
        settings.webhook_max_attempts, settings.webhook_retry_base_seconds, settings.webhook_retry_max_seconds
    )
    deliverer = Deliverer(
        Outbox(database, service, backoff, settings.webhook_tenant_concurrency),
        destinations,
        draining,
        timeout_seconds=settings.webhook_timeout_seconds,
        concurrency=settings.webhook_concurrency,
        lease_seconds=settings.webhook_lease_seconds,
        poll_seconds=settings.webhook_poll_seconds,
    )
    return service, deliverer


def build_limiter(settings: GatewaySettings) -> Limiter:
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            lease_seconds=settings.reservation_lease_seconds,
            open_reservation_lease_seconds=settings.training_reservation_lease_seconds,
        )
    return MemoryLimiter()


def build_scheduler(
    settings: GatewaySettings, engine_settings: EngineSettings, status: Callable[[], BackendStatus], metrics: Metrics
) -> Scheduler:
    """Fair queuing over this process's engines, or (upstream, on Redis) over the replicas every gateway shares."""
    limits = QueueLimits(
        fair=settings.fair_queuing,
        max_waiting_per_tenant=settings.queue_max_waiting_per_tenant,
        max_waiting=settings.queue_max_waiting,
        wait_seconds=settings.queue_wait_seconds,
        burst_slots=engine_settings.scheduler_burst_seqs,
    )
    upstream = status if engine_settings.engine == "upstream" else None
    capacity = engine_capacity(engine_settings.max_num_seqs, upstream, settings.scheduler_capacity)
    scheduler: Scheduler
    if settings.redis_url and engine_settings.engine == "upstream":
        scheduler = RedisScheduler(
            settings.redis_url,
            limits,
            capacity,
            metrics.queue_wait_observer(),
            lease_seconds=settings.reservation_lease_seconds,
        )
    else:
        scheduler = MemoryScheduler(limits, capacity, metrics.queue_wait_observer())
    metrics.watch_queue(scheduler.waiting)
    return scheduler


def _vocabulary(settings: EngineSettings) -> str | None:
    """The tokenizer dir structured-output constraints are compiled against: the configured model's, or the
    prepared default model's (also what upstream servers of it use); None when neither is on this machine."""
    model_dir = settings.model_path or settings.models_dir / DEFAULT_MODEL_ID
    return str(model_dir) if (model_dir / "tokenizer_config.json").is_file() else None


def create_app(
    settings: GatewaySettings,
    engine_settings: EngineSettings,
    backend_factory: BackendFactory = build_backend,
    bootstrapped: Bootstrapped | None = None,
) -> FastAPI:
    """``bootstrapped``: what ``llmaas serve`` did before (``gateway.bootstrap``); else the lifespan does it."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keep_private()
        async with AsyncExitStack() as stack:
            booted = bootstrapped if bootstrapped is not None else await run_in_threadpool(bootstrap, settings)
            database, admin_key = booted.database, booted.admin_key
            stack.callback(database.dispose)
            tenancy = TenancyService(database)
            usage_ledger = UsageLedger(database)
            ledger = LedgerWriter(
                usage_ledger.write,
                settings.data_dir / "ledger",
                flush_interval=settings.meter_flush_interval_seconds,
                capacity=settings.ledger_queue_capacity,
                shutdown_seconds=settings.ledger_shutdown_seconds,
                on_dead_letter=metrics.dead_letters.inc,
                in_flight=lambda: admission.in_flight,  # read only once requests run: admission exists by then
            )
            stack.callback(ledger.close)
            await run_in_threadpool(ledger.replay)
            metrics.watch_ledger(lambda: ledger.backlog)
            limiter = build_limiter(settings)
            stack.push_async_callback(limiter.close)
            tasks = SettlementTasks()
            stack.push_async_callback(tasks.drain)
            prices = price_book(settings)
            billing = TrainingBilling(database, limiter, prices)
            stack.push_async_callback(billing.run_once)  # a last pass at shutdown

            registry = adapter_registry(database, settings)
            files = file_store(database, settings)
            backend = backend_factory(engine_settings, partial(SharedDirectory, registry.store_dir))
            stack.push_async_callback(backend.close)
            await backend.start()
            metrics.watch_backend(backend.status)
            stack.push_async_callback(_cancel, asyncio.create_task(billing.run()))

            admission = Admission(
                limiter,
                ledger,
                usage_ledger,
                tasks,
                prices,
                training_lease_seconds=settings.training_reservation_lease_seconds,
            )
            service_minutes = MinuteStore(database, new_id("gw"), metrics.minutes)
            stack.push_async_callback(_cancel, asyncio.create_task(service_minutes.run(FLUSH_SECONDS)))
            leases = asyncio.create_task(admission.keep_leases(settings.reservation_lease_seconds / 3))
            stack.push_async_callback(_cancel, leases)
            key_cache = KeyCache(tenancy.identify, settings.key_cache_ttl_seconds)
            evals = EvalService(database)
            workers = Workers(settings.tenant_work_processes)
            stack.callback(workers.close)
            alias_book = AliasBook(database, settings.alias_cache_ttl_seconds)
            catalog = ModelCatalog(backend, registry, alias_book)
            caps = RequestCaps.from_settings(settings, catalog.longest_context(engine_settings.max_model_len))
            metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
            activity = KeyActivity(tenancy.record_last_used)
            stack.push_async_callback(activity.flush)  # what the last round left, at shutdown
            noting = asyncio.create_task(activity.run(settings.key_activity_flush_seconds))
            stack.push_async_callback(_cancel, noting)
            authenticator = Authenticator(key_cache, admin_key, metrics_token, tenancy.identity_of_key, activity)
            throttle = sign_in_throttle(settings.redis_url, settings.console_sign_in_failures_per_address)
            stack.push_async_callback(throttle.close)
            grammar_pool = GrammarPool(
                settings.structured_compile_processes,
                _vocabulary(engine_settings),
                settings.structured_compile_seconds,
                waiting=16 * settings.structured_compile_processes,
            )
            stack.callback(grammar_pool.close)
            structured = StructuredOutputs(grammar_pool)
            responses = ResponseStore(database, settings.responses_max_chain_depth)
            scheduler = build_scheduler(settings, engine_settings, backend.status, metrics)
            stack.push_async_callback(scheduler.close)
            webhooks, deliverer = build_webhooks(settings, database, lambda: admission.draining)
            await deliverer.start()
            stack.push_async_callback(deliverer.close)
            app.state.llmaas = AppState(
                settings=settings,
                engine_settings=engine_settings,
                metrics=metrics,
                service_minutes=service_minutes,
                tenancy=tenancy,
                key_cache=key_cache,
                access=AccessChanges(tenancy, key_cache),
                authenticator=authenticator,
                admission=admission,
                usage=UsageReports(database),
                catalog=catalog,
                caps=caps,
                files=files,
                jobs=job_service(database, prices),
                prices=prices,
                evals=evals,
                workers=workers,
                console_sessions=ConsoleSessions(database, admin_key),
                sign_in_throttle=throttle,
                eraser=TenantEraser(database, files, registry, prices),
                exports=TenantExport(database, files, registry),
                audit_log=AuditLog(database),
                structured=structured,
                responses=responses,
                batches=BatchService(database),
                scheduler=scheduler,
                idempotency=IdempotencyStore(database, settings.idempotency_retention_hours),
                completions=CompletionStore(database, settings.default_max_storage_bytes),
                webhooks=webhooks,
                webhook_delivery=deliverer,
                aliases=AliasService(database, catalog, alias_book),
            )
            stack.push_async_callback(_cancel, asyncio.create_task(deliverer.run_forever()))
            queue = RunQueue(database)
            runner = EvalRunner(
                queue,
                authenticator,
                catalog,
                admission,
                caps,
                metrics,
                workers,
                structured,
                scheduler,
                concurrency=settings.eval_concurrency,
                grader_max_tokens=settings.eval_grader_max_tokens,
                grader_seconds=settings.eval_grader_seconds,
            )
            stack.push_async_callback(_cancel, asyncio.create_task(runner.run_forever()))
            batch_runner = BatchRunner(
                BatchQueue(database, files),
                authenticator,
                ServingParts(
                    catalog, admission, caps, metrics, structured, scheduler, engine_settings.tool_call_parser
                ),
                {
                    "/v1/chat/completions": chat.batch_answer,
                    "/v1/completions": completions.batch_answer,
                    "/v1/embeddings": embeddings.batch_answer,
                },
                concurrency=settings.batch_concurrency,
                stale_after_seconds=settings.batch_lease_seconds,
            )
            stack.push_async_callback(_cancel, asyncio.create_task(batch_runner.run_forever()))
            retention = Retention(
                database,
                files,
                files_days=settings.retention_days_files,
                eval_items_days=settings.retention_days_eval_items,
                responses_days=settings.retention_days_responses,
                completions_days=settings.retention_days_chat_completions,
                webhook_deliveries_days=settings.retention_days_webhook_deliveries,
            )
            purging = asyncio.create_task(retention.run(settings.retention_interval_seconds))
            stack.push_async_callback(_cancel, purging)
            yield

    app = FastAPI(title="LLMaaS", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_api_docs(app)
    install_error_handlers(app)
    install_routes(app)
    # Added innermost first: a request meets them in the reverse order.
    app.add_middleware(BodyReadTimeoutMiddleware, timeout_seconds=settings.body_read_timeout_seconds)
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(
        AuthenticationMiddleware,
        authenticator=lambda: state_of(app).authenticator,
        console_sessions=lambda: state_of(app).console_sessions,
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    if settings.cors_origins:  # outermost: a browser's preflight carries no key and must not meet authentication
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],  # Authorization, Content-Type, and the SDKs' own (x-stainless-*, OpenAI-Beta)
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    return app


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
