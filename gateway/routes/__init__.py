"""Every HTTP route of the gateway: the tenants' OpenAI API under ``/v1`` (``models``, ``chat``,
``stored_completions``, ``completions``, ``embeddings``, ``responses``, ``files``, ``fine_tuning``, ``evals``,
``batches``, ``usage``, ``webhooks``, ``aliases``), the operator's under ``/admin/v1`` (``admin``, ``usage``,
``webhooks``, ``aliases``), ``ops`` (health, readiness, metrics) and the web ``console``; and the answer to a path
no route has (404 ``unknown_url``, "Invalid URL (POST /v1/foo): this server does not serve it.") or a method a
path's route does not take (405 ``method_not_allowed`` naming the methods it does), in OpenAI's error shape.
They answer after authentication (the middleware order in ``gateway.app``): a request without a valid key gets
401 on any ``/v1`` or ``/admin`` path, served or not, and so learns nothing of which exist.

The top layer: routes take the domains' services through the typed dependencies of ``gateway.state`` and own
only HTTP (parsing, status codes, response shapes); the domains below never import a route or the state.

``webhooks`` serves the tenants' webhook endpoints under ``/v1`` and the operator's view of them under ``/admin/v1``."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from gateway.errors import ERROR_RESPONSES, MethodNotAllowed, UnknownURL
from gateway.routes import (
    admin,
    aliases,
    batches,
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
    stored_completions,
    usage,
    webhooks,
)


def install_routes(app: FastAPI) -> None:
    """Every router; the APIs' (tenants' and operator's) document the OpenAI error body of their 4xx and 5xx."""
    tenants_api = (
        models,
        chat,
        stored_completions,
        completions,
        embeddings,
        responses,
        files,
        fine_tuning,
        evals,
        batches,
        usage,
        webhooks,
        aliases,
    )
    for module in tenants_api:
        app.include_router(module.router, responses=ERROR_RESPONSES)
    for router in (admin.router, usage.admin_router, webhooks.admin_router, aliases.admin_router):  # the operator's
        app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(ops.router)
    app.include_router(console.router)
    app.mount("/console/static", StaticFiles(directory=console.STATIC_DIR), "console")
    console.install_console_handlers(app)
    _install_unserved(app)


def _install_unserved(app: FastAPI) -> None:
    """No route has the path: the router's default answers; a route has it but not the method: its 405."""
    not_found = app.router.default

    async def unknown_url(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await not_found(scope, receive, send)
            return
        await UnknownURL(scope["method"], scope["path"]).response()(scope, receive, send)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        allowed = Headers(exc.headers).get("allow") if isinstance(exc, HTTPException) and exc.headers else None
        return MethodNotAllowed(request.method, request.scope["path"], allowed).response()

    app.router.default = unknown_url
    app.add_exception_handler(405, method_not_allowed)
