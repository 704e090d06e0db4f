"""The console's pages. Sign-in exchanges a pasted key (a tenant's, or the admin key) for a server-side session
and its cookie (``gateway.console.sessions``); every page reads the session's row, checks the key behind it
again, and shows what the same services behind the admin and OpenAI APIs return (no second source of truth).
Every form that changes something carries the session's CSRF token, and every state-changing request from
another site is refused (``gateway.console.origin``); sign-in takes only a browser's same-origin form and is
throttled after failures (``gateway.console.throttle``). A key made here is never broader than the session's
key, and only a key manager revokes other keys (``gateway.tenancy.service``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.accounting.usage import Bucket, UsageFilters, usage_csv
from gateway.audit import OPERATOR, Actor, actor_of
from gateway.audit_log import AuditFilters
from gateway.console.origin import cross_site, from_a_browser
from gateway.console.sessions import COOKIE, ConsoleSession
from gateway.errors import APIError, PermissionDenied, as_api_error
from gateway.ops.snapshot import service_snapshot
from gateway.state import state_of
from gateway.tenancy.models import KeyCreate
from gateway.tenancy.principal import CONSOLE_OPERATOR, Operator, TenantPrincipal, sign_in

templates = Jinja2Templates(directory=FilePath(__file__).parent / "templates")
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


router = APIRouter(prefix="/console", include_in_schema=False, dependencies=[Depends(same_origin)])


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


async def console_session(request: Request) -> tuple[ConsoleSession, TenantPrincipal | Operator]:
    state = state_of(request.app)
    session = await state.console_sessions.check(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired
    try:
        return session, await state.authenticator.console_principal(session.subject)
    except APIError as exc:  # revoked, expired, suspended: the session ends
        raise SignInRequired from exc


SessionDep = Annotated[tuple[ConsoleSession, TenantPrincipal | Operator], Depends(console_session)]


def _tenant(principal: TenantPrincipal | Operator) -> TenantPrincipal:
    if not isinstance(principal, TenantPrincipal):
        raise Refused("This page is a tenant's; the operator's pages are under /console/admin.")
    return principal


def _operator(principal: TenantPrincipal | Operator) -> Operator:
    if not isinstance(principal, Operator):
        raise Refused("This page needs the admin key.")
    return principal


def _actor(request: Request, principal: TenantPrincipal | Operator) -> Actor:
    if isinstance(principal, TenantPrincipal):
        return actor_of(request, principal.key_id, principal.tenant_id)
    return actor_of(request, OPERATOR)


def _check_csrf(session: ConsoleSession, token: str | None) -> None:
    if not session.csrf_matches(token):
        raise Refused("The form's CSRF token is missing or wrong; reload the page and try again.")


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return _page(request, "login.html", error=None)


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form(max_length=512)]) -> Response:
    # A session cookie is only ever set for a form a browser posted from the console's own page.
    if not from_a_browser(request.scope):
        raise Refused("Sign in from the console's own page (the request carried neither Origin nor Sec-Fetch-Site).")
    state = state_of(request.app)
    address = request.client.host if request.client else ""
    key = key.strip()
    try:
        await state.sign_in_throttle.check(address, key)
        try:
            principal = await sign_in(state.authenticator, key)
        except APIError:
            await state.sign_in_throttle.failed(address, key)
            raise
    except APIError as exc:
        page = _page(request, "login.html", status_code=exc.status_code, error=exc.message)
        page.headers.update(exc.headers)
        return page
    if isinstance(principal, Operator):
        cookie, session = await state.console_sessions.start(CONSOLE_OPERATOR, None, None, _actor(request, principal))
    else:
        cookie, session = await state.console_sessions.start(
            principal.key_id, principal.tenant_id, principal.identity.expires_at, _actor(request, principal)
        )
    response = RedirectResponse(_home(session), 303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=state.console_sessions.max_age_seconds,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(
    request: Request, current: SessionDep, csrf: Annotated[str | None, Form(max_length=128)] = None
) -> Response:
    _check_csrf(current[0], csrf)
    await state_of(request.app).console_sessions.end(current[0], _actor(request, current[1]))
    response = RedirectResponse("/console/login", 303)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _home(session: ConsoleSession) -> str:
    return "/console/admin/tenants" if session.is_operator else "/console/usage"


@router.get("")
async def home(current: SessionDep) -> Response:
    return RedirectResponse(_home(current[0]), 303)


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def _this_month(bucket: Bucket, now: datetime | None = None) -> UsageFilters:
    return UsageFilters(since=_month_start(now or datetime.now(UTC)), bucket=bucket)


@router.get("/usage")
async def usage_page(request: Request, current: SessionDep) -> HTMLResponse:
    tenant = _tenant(current[1])
    state = state_of(request.app)
    now = datetime.now(UTC)
    filters = _this_month("day", now)
    by_model = await run_in_threadpool(state.usage.report, tenant.tenant_id, filters, ("model",))
    by_key = await run_in_threadpool(state.usage.report, tenant.tenant_id, filters, ("key",))
    budget = tenant.identity.quotas.monthly_token_budget
    cost_budget = tenant.identity.quotas.monthly_cost_budget_nanos
    chart = {
        "by_model": by_model["data"],
        "budget": budget,
        "cost_budget": None if cost_budget is None else cost_budget / 1e9,
        "first_day": _month_start(now).date().isoformat(),
        "last_day": now.date().isoformat(),
    }
    return _page(
        request,
        "usage.html",
        session=current[0],
        tenant=tenant,
        by_model=by_model,
        by_key=by_key,
        budget=budget,
        chart_json=_script_json(chart),
    )


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` (or ``<!--``) can close it early."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@router.get("/usage.csv")
async def usage_csv_download(request: Request, current: SessionDep) -> Response:
    tenant = _tenant(current[1])
    filters = _this_month("day")
    report = await run_in_threadpool(state_of(request.app).usage.report, tenant.tenant_id, filters, ("model", "key"))
    return Response(
        usage_csv(report),
        media_type="text/csv",
        headers={"content-disposition": 'attachment; filename="usage.csv"', **SECURITY_HEADERS},
    )


async def _keys_page(
    request: Request, current: tuple[ConsoleSession, Any], status_code: int = 200, **context: Any
) -> HTMLResponse:
    tenant = _tenant(current[1])
    state = state_of(request.app)
    keys = await run_in_threadpool(state.tenancy.list_keys, tenant.tenant_id)
    return _page(
        request,
        "keys.html",
        status_code,
        session=current[0],
        keys=keys,
        may_manage=state.settings.console_tenant_keys,
        me=tenant.identity,
        **{"created": None, "error": None, **context},
    )


@router.get("/keys")
async def keys_page(request: Request, current: SessionDep) -> HTMLResponse:
    return await _keys_page(request, current)


def _check_may_manage_keys(request: Request) -> None:
    if not state_of(request.app).settings.console_tenant_keys:
        raise Refused("Your operator manages this organization's keys.")


@router.post("/keys")
async def create_key(
    request: Request,
    current: SessionDep,
    name: Annotated[str, Form(max_length=bounds.KEY_NAME)] = "",
    models: Annotated[str, Form(max_length=16_384)] = "",
    expires_in_days: Annotated[float | None, Form()] = None,
    key_manager: Annotated[bool, Form()] = False,
    csrf: Annotated[str | None, Form(max_length=128)] = None,
) -> HTMLResponse:
    """A new key, never broader than the session's: no models named means the session key's models, no expiry
    its expiry."""
    _check_csrf(current[0], csrf)
    _check_may_manage_keys(request)
    tenant = _tenant(current[1])
    try:
        body = KeyCreate(
            name=name,
            allowed_models=models.replace(",", " ").split() or None,
            expires_in_days=expires_in_days,
            key_manager=key_manager,
        )
        created = await run_in_threadpool(
            state_of(request.app).tenancy.create_key,
            tenant.tenant_id,
            body,
            actor=_actor(request, tenant),
            by_key=tenant.key_id,
        )
    except PermissionDenied as exc:
        raise Refused(exc.message) from exc
    except ValidationError as exc:  # a form value out of bounds: said as the API would say it
        invalid = as_api_error(RequestValidationError(exc.errors()))
        return await _keys_page(request, current, invalid.status_code, error=invalid.message)
    except APIError as exc:
        return await _keys_page(request, current, exc.status_code, error=exc.message)
    return await _keys_page(request, current, created=created)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    request: Request,
    current: SessionDep,
    key_id: Annotated[str, Path(max_length=40)],
    csrf: Annotated[str | None, Form(max_length=128)] = None,
) -> Response:
    _check_csrf(current[0], csrf)
    _check_may_manage_keys(request)
    tenant = _tenant(current[1])
    state = state_of(request.app)
    try:
        revoked = await run_in_threadpool(
            state.tenancy.revoke_key, tenant.tenant_id, key_id, actor=_actor(request, tenant), by_key=tenant.key_id
        )
    except PermissionDenied as exc:
        raise Refused(exc.message) from exc
    state.key_cache.invalidate_tenant(revoked.tenant_id)
    return RedirectResponse("/console/keys", 303)


def _shell_page(template: str, may_see: Callable[[TenantPrincipal | Operator], object]) -> Any:
    """A page whose data its own script reads from the APIs: the route only checks who may see it."""

    async def page(request: Request, current: SessionDep) -> HTMLResponse:
        may_see(current[1])
        return _page(request, template, session=current[0])

    return page


for _path, _template in (
    ("/playground", "playground.html"),
    ("/models", "models.html"),
    ("/evaluations", "evaluations.html"),
    ("/fine-tuning", "fine_tuning.html"),
):
    router.add_api_route(_path, _shell_page(_template, _tenant), methods=["GET"])
router.add_api_route("/admin/service", _shell_page("service.html", _operator), methods=["GET"])


@router.get("/admin/tenants")
async def tenants_page(request: Request, current: SessionDep) -> HTMLResponse:
    _operator(current[1])
    state = state_of(request.app)
    tenants = await run_in_threadpool(state.tenancy.list_tenants)
    unpriced: dict[str, list[str]] = {}  # model -> the tenants billed 0 for it: the operator should price it
    for tenant in tenants:
        for model in state.prices.unpriced(tenant.model_prices, state.catalog.base_ids()):
            unpriced.setdefault(model, []).append(tenant.name)
    return _page(request, "tenants.html", session=current[0], tenants=tenants, unpriced=unpriced)


@router.get("/admin/service.json")
async def service_state(request: Request, current: SessionDep) -> Response:
    """What the service page polls: the metrics registry's snapshot and the fine-tuning queue."""
    _operator(current[1])
    state = state_of(request.app)
    snapshot = service_snapshot(state.metrics.registry)
    snapshot["fine_tuning_queue"] = await run_in_threadpool(state.jobs.queue)
    return Response(json.dumps(snapshot), media_type="application/json", headers=SECURITY_HEADERS)


@router.get("/admin/usage")
async def all_usage_page(request: Request, current: SessionDep) -> HTMLResponse:
    _operator(current[1])
    filters = _this_month("none")
    report = await run_in_threadpool(state_of(request.app).usage.report, None, filters, ("tenant", "model"))
    tenants = {t.id: t.name for t in await run_in_threadpool(state_of(request.app).tenancy.list_tenants)}
    return _page(request, "all_usage.html", session=current[0], report=report, tenant_names=tenants)


@router.get("/admin/audit")
async def audit_page(
    request: Request, current: SessionDep, filters: Annotated[AuditFilters, Depends()]
) -> HTMLResponse:
    """The audit log, newest first, a page at a time (read only, as everywhere)."""
    _operator(current[1])
    state = state_of(request.app)
    page = await run_in_threadpool(state.audit_log.page, filters)
    tenants = {t.id: t.name for t in await run_in_threadpool(state.tenancy.list_tenants)}
    query = {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in asdict(filters).items()
        if value not in (None, "")
    }
    older_url = f"/console/admin/audit?{urlencode({**query, 'after': page.last_id})}"
    return _page(
        request, "audit.html", session=current[0], page=page, filters=filters, tenant_names=tenants, older_url=older_url
    )


def install_console_handlers(app: Any) -> None:
    """A page without a valid session sends the browser to sign in; a refusal is shown as a page."""

    async def to_login(request: Request, exc: Exception) -> Response:
        return RedirectResponse("/console/login", 303)

    async def refused(request: Request, exc: Exception) -> Response:
        session = await state_of(request.app).console_sessions.check(request.cookies.get(COOKIE))
        return _page(request, "refused.html", status_code=403, session=session, reason=str(exc))

    app.add_exception_handler(SignInRequired, to_login)
    app.add_exception_handler(Refused, refused)
