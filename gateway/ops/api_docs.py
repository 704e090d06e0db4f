"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc``, served from vendored assets (the
``fastapi-offline`` package's copies, and our own start-up script) under a CSP that allows scripts from this
origin only: no third-party script, no inline script. The console's session cookie is scoped to ``/console``,
so these pages never receive it."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "same-origin"}

_SWAGGER = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLMaaS API</title>
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css"><link rel="icon" href="{ASSETS}/favicon.png"></head>
<body><div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{ASSETS}/swagger-init.js"></script>
</body></html>"""

_REDOC = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLMaaS API</title>
<link rel="icon" href="{ASSETS}/favicon.png"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="{ASSETS}/redoc.standalone.js"></script>
</body></html>"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return HTMLResponse(_SWAGGER, headers=HEADERS)


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return HTMLResponse(_REDOC, headers=HEADERS)


def install_api_docs(app: FastAPI) -> None:
    """The two pages and their assets (the app is made with ``docs_url=None, redoc_url=None``)."""
    app.include_router(router)
    assets = StaticFiles(directory=Path(__file__).with_name("docs_static"), packages=[("fastapi_offline", "static")])
    app.mount(ASSETS, assets, "docs-assets")
