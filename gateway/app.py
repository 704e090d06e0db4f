"""The app factory: settings in, a FastAPI app out. Every resource (database, limiter, meter, engine) is
built in the lifespan, never at import, and released in reverse order when the app stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from adapters.jobs import JobService
from adapters.registry import AdapterRegistry
from engine.protocol import Engine
from engine.settings import EngineSettings
from gateway.admin_key import admin_key_path, load_or_create_admin_key
from gateway.auth import KeyCache
from gateway.catalog import ModelCatalog, ServedModel
from gateway.db import Database
from gateway.db.engine import sqlite_url
from gateway.errors import install_error_handlers
from gateway.files import FileStore
from gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.metering import Meter
from gateway.metrics import Metrics
from gateway.middleware import RequestContextMiddleware
from gateway.quota import BackgroundTasks
from gateway.routes import admin, chat, completions, files, fine_tuning, health, models, usage
from gateway.settings import GatewaySettings
from gateway.tenancy.service import TenancyService
from gateway.training_billing import TrainingBilling

logger = logging.getLogger(__name__)
EngineFactory = Callable[[EngineSettings], Engine]


def build_vllm_engine(settings: EngineSettings) -> Engine:
    from engine.model_prep import resolve_model_dir
    from engine.vllm_engine import VLLMEngine

    return VLLMEngine(settings, resolve_model_dir(settings))


def open_database(settings: GatewaySettings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.database_url or sqlite_url(settings.data_dir))
    database.migrate()
    return database


def adapter_registry(database: Database, settings: GatewaySettings) -> AdapterRegistry:
    return AdapterRegistry(database.sessions, settings.data_dir / "adapters")


def file_store(database: Database, settings: GatewaySettings) -> FileStore:
    return FileStore(database, settings.data_dir / "files")


def build_limiter(settings: GatewaySettings) -> Limiter:
    if settings.redis_url:
        return RedisLimiter(settings.redis_url, lease_seconds=settings.reservation_lease_seconds)
    return MemoryLimiter()


def create_app(
    settings: GatewaySettings,
    engine_settings: EngineSettings,
    engine_factory: EngineFactory = build_vllm_engine,
) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            database = await run_in_threadpool(open_database, settings)
            stack.callback(database.dispose)
            admin_key, generated = load_or_create_admin_key(settings)
            if generated:
                logger.warning(
                    "Generated the admin key (shown once, kept 0600 in %s): %s",
                    admin_key_path(settings.data_dir),
                    admin_key,
                )
            tenancy = TenancyService(database)
            limiter = build_limiter(settings)
            stack.push_async_callback(limiter.close)
            meter = Meter(tenancy, settings.meter_flush_interval_seconds)
            stack.callback(meter.close)
            background = BackgroundTasks()
            stack.push_async_callback(background.drain)

            jobs = JobService(database.sessions)
            billing = TrainingBilling(jobs, tenancy, limiter, meter)
            stack.push_async_callback(billing.settle_finished)  # a last pass at shutdown

            engine = engine_factory(engine_settings)
            stack.callback(engine.shutdown)
            metrics.watch_engine(engine)
            served = ServedModel(id=engine_settings.served_model_name, engine=engine, created=int(time.time()))

            billing_task = asyncio.create_task(billing.run())
            stack.push_async_callback(_cancel, billing_task)

            app.state.settings = settings
            app.state.engine_settings = engine_settings
            app.state.admin_key = admin_key
            app.state.tenancy = tenancy
            app.state.key_cache = KeyCache(tenancy, settings.key_cache_ttl_seconds)
            app.state.limiter = limiter
            app.state.meter = meter
            app.state.background = background
            app.state.catalog = ModelCatalog([served], adapter_registry(database, settings))
            app.state.files = file_store(database, settings)
            app.state.jobs = jobs
            yield

    app = FastAPI(title="LLMaaS", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics
    install_error_handlers(app)
    for module in (models, chat, completions, files, fine_tuning, usage, health, admin):
        app.include_router(module.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
