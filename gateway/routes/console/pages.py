"""How the console answers: a page rendered from its template with the security headers, JSON that is safe in a
``<script>`` element, and the two ways a page is refused (to the sign-in page, or a page saying why)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from gateway.accounting.usage import usage_csv
from gateway.edge.origin import cross_site
from gateway.state import state_of
from gateway.tenancy.console_sessions import COOKIE

STATIC_DIR = Path(__file__).parent / "static"
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SignInRequired(Exception):
    """No valid session: the page sends the browser to sign in."""


class Refused(Exception):
    """The session may not see this page or do this: answered with a page saying why (403)."""


async def same_origin(request: Request) -> None:
    reason = cross_site(request.scope)
    if reason is not None:
        raise Refused(reason)


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def csv_download(report: dict[str, Any]) -> Response:
    """A usage report as the ``usage.csv`` the browser saves."""
    return Response(
        usage_csv(report),
        media_type="text/csv",
        headers={"content-disposition": 'attachment; filename="usage.csv"', **SECURITY_HEADERS},
    )


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` (or ``<!--``) can close it early."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def install_console_handlers(app: FastAPI) -> None:
    """A page without a valid session sends the browser to sign in; a refusal is shown as a page."""

    async def to_login(request: Request, exc: Exception) -> Response:
        return RedirectResponse("/console/login", 303)

    async def refused(request: Request, exc: Exception) -> Response:
        # An exception handler takes no dependencies: the one place the console reads the app's state itself.
        session = await state_of(request.app).console_sessions.check(request.cookies.get(COOKIE))
        return page(request, "refused.html", status_code=403, session=session, reason=str(exc))

    app.add_exception_handler(SignInRequired, to_login)
    app.add_exception_handler(Refused, refused)
