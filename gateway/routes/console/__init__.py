"""``/console``: the web console for tenants and the operator, served by the gateway itself (Jinja2 templates
that extend one ``base.html``, vendored static files; no Node build, no external fetch).

Sign-in exchanges a pasted key (a tenant's, or the admin key) for a server-side session and its cookie
(``gateway.tenancy.console_sessions``); every page reads the session's row, checks the key behind it again
(``visits``), and shows what the same services behind the admin and OpenAI APIs return (no second source of
truth). Every form that changes something carries the session's CSRF token, and every state-changing request
from another site is refused (``gateway.edge.origin``); sign-in takes only a browser's same-origin form and is
throttled after failures (``gateway.tenancy.sign_in_throttle``). A key made here is never broader than the
session's key, and only a key manager revokes other keys (``gateway.tenancy.service``).

Modules: ``pages`` (rendering, refusals), ``visits`` (the typed session dependencies), ``sign_in``,
``tenant_pages``, ``operator_pages`` and ``icon`` (``/favicon.ico``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.routes.console import icon, operator_pages, sign_in, tenant_pages
from gateway.routes.console.pages import STATIC_DIR, install_console_handlers, same_origin

router = APIRouter(include_in_schema=False, dependencies=[Depends(same_origin)])
for _module in (icon, sign_in, tenant_pages, operator_pages):
    router.include_router(_module.router)

__all__ = ["STATIC_DIR", "install_console_handlers", "router"]
