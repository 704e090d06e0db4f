"""The app factory: settings in, a FastAPI app out. The engine is built in the lifespan (never at import)
and shut down when the app stops."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engine.protocol import Engine
from engine.settings import EngineSettings
from gateway.catalog import ModelCatalog, ServedModel
from gateway.errors import install_error_handlers
from gateway.metrics import Metrics
from gateway.middleware import RequestContextMiddleware
from gateway.routes import chat, completions, health, models

EngineFactory = Callable[[EngineSettings], Engine]


def build_vllm_engine(settings: EngineSettings) -> Engine:
    from engine.model_prep import resolve_model_dir
    from engine.vllm_engine import VLLMEngine

    return VLLMEngine(settings, resolve_model_dir(settings))


def create_app(engine_settings: EngineSettings, engine_factory: EngineFactory = build_vllm_engine) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = engine_factory(engine_settings)
        try:
            metrics.watch_engine(engine)
            served = ServedModel(id=engine_settings.served_model_name, engine=engine, created=int(time.time()))
            app.state.catalog = ModelCatalog([served])
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="LLMaaS", version="0.1.0", lifespan=lifespan)
    app.state.metrics = metrics
    install_error_handlers(app)
    for module in (models, chat, completions, health):
        app.include_router(module.router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
