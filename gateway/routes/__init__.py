"""Every HTTP route of the gateway: the tenants' OpenAI API under ``/v1`` (``models``, ``chat``, ``completions``,
``embeddings``, ``responses``, ``files``, ``fine_tuning``, ``evals``, ``usage``), the operator's under ``/admin/v1``
(``admin``, ``usage``), ``ops`` (health, readiness, metrics) and the web ``console``.

The top layer: routes take the domains' services through the typed dependencies of ``gateway.state`` and own
only HTTP (parsing, status codes, response shapes); the domains below never import a route or the state."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gateway.errors import ERROR_RESPONSES
from gateway.routes import (
    admin,
    chat,
    completions,
    console,
    embeddings,
    evals,
    files,
    fine_tuning,
    models,
    ops,
    responses,
    usage,
)


def install_routes(app: FastAPI) -> None:
    """Every router; the APIs' (tenants' and operator's) document the OpenAI error body of their 4xx and 5xx."""
    tenants_api = (models, chat, completions, embeddings, responses, files, fine_tuning, evals, usage)
    for module in tenants_api:
        app.include_router(module.router, responses=ERROR_RESPONSES)
    for router in (admin.router, usage.admin_router):  # the operator's
        app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(ops.router)
    app.include_router(console.router)
    app.mount("/console/static", StaticFiles(directory=console.STATIC_DIR), "console")
    console.install_console_handlers(app)
