"""A tenant's console pages: usage this month (and its CSV), API keys (made and revoked through
``gateway.tenancy.access``, as the admin API does), and the pages whose own scripts call the OpenAI API (and
``/v1/aliases``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.errors import APIError, PermissionDenied, as_api_error
from gateway.routes.console.examples import curls
from gateway.routes.console.pages import Refused, csv_download, page, script_json
from gateway.routes.console.usage_view import UsageViewDep
from gateway.routes.console.visits import CsrfField, TenantVisitDep, Visit
from gateway.state import AccessDep, CatalogDep, SettingsDep, TenancyDep
from gateway.tenancy.models import KeyCreate
from gateway.tenancy.principal import TenantPrincipal

router = APIRouter(prefix="/console")


def teaching_calls(request: Request, catalog: CatalogDep) -> dict[str, str]:
    """The API calls a page's empty states offer to copy, against this gateway and its first chat model."""
    chat_models = [model for model in catalog.base_ids() if not catalog.embeds(model)]
    return curls(str(request.base_url), chat_models[0] if chat_models else "MODEL")


@router.get("/usage")
async def usage_page(request: Request, visit: TenantVisitDep, view: UsageViewDep, catalog: CatalogDep) -> HTMLResponse:
    tenant = visit.principal
    shown = await run_in_threadpool(view.tenant_page, tenant, datetime.now(UTC))
    return page(
        request,
        "usage.html",
        session=visit.session,
        tenant=tenant,
        by_model=shown["by_model"],
        by_key=shown["by_key"],
        budget=tenant.identity.quotas.monthly_token_budget,
        chart=shown["chart"],
        chart_json=script_json(shown["chart"]),
        calls=teaching_calls(request, catalog),
    )


@router.get("/usage.csv")
async def usage_csv_download(visit: TenantVisitDep, view: UsageViewDep) -> Response:
    return csv_download(await run_in_threadpool(view.tenant_csv, visit.principal.tenant_id))


async def _keys_page(
    request: Request,
    visit: Visit[TenantPrincipal],
    tenancy: TenancyDep,
    settings: SettingsDep,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    keys = await run_in_threadpool(tenancy.list_keys, visit.principal.tenant_id)
    return page(
        request,
        "keys.html",
        status_code,
        session=visit.session,
        keys=keys,
        may_manage=settings.console_tenant_keys,
        me=visit.principal.identity,
        **{"created": None, "error": None, **context},
    )


@router.get("/keys")
async def keys_page(
    request: Request, visit: TenantVisitDep, tenancy: TenancyDep, settings: SettingsDep
) -> HTMLResponse:
    return await _keys_page(request, visit, tenancy, settings)


def _check_may_manage_keys(settings: SettingsDep) -> None:
    if not settings.console_tenant_keys:
        raise Refused("Your operator manages this organization's keys.")


@router.post("/keys")
async def create_key(
    request: Request,
    visit: TenantVisitDep,
    access: AccessDep,
    tenancy: TenancyDep,
    settings: SettingsDep,
    name: Annotated[str, Form(max_length=bounds.KEY_NAME)] = "",
    models: Annotated[str, Form(max_length=16_384)] = "",
    expires_in_days: Annotated[float | None, Form()] = None,
    key_manager: Annotated[bool, Form()] = False,
    monthly_token_budget: Annotated[str, Form(max_length=32)] = "",
    monthly_cost_budget: Annotated[str, Form(max_length=32)] = "",
    csrf: CsrfField = None,
) -> HTMLResponse:
    """A new key, never broader than the session's: no models named means the session key's models, no expiry
    its expiry."""
    visit.check_csrf(csrf)
    _check_may_manage_keys(settings)
    tenant = visit.principal
    try:
        body = KeyCreate(
            name=name,
            allowed_models=models.replace(",", " ").split() or None,
            expires_in_days=expires_in_days,
            key_manager=key_manager,
            **_budgets_of_form(monthly_token_budget, monthly_cost_budget),
        )
        created = await access.create_key(tenant.tenant_id, body, visit.actor, by_key=tenant.key_id)
    except PermissionDenied as exc:
        raise Refused(exc.message) from exc
    except ValidationError as exc:  # a form value out of bounds: said as the API would say it
        invalid = as_api_error(RequestValidationError(exc.errors()))
        return await _keys_page(request, visit, tenancy, settings, invalid.status_code, error=invalid.message)
    except APIError as exc:
        return await _keys_page(request, visit, tenancy, settings, exc.status_code, error=exc.message)
    return await _keys_page(request, visit, tenancy, settings, created=created)


def _budgets_of_form(tokens: str, cost: str) -> dict[str, Any]:
    """The key's budgets as the form gave them (empty: unasked), for ``KeyCreate`` to check like the API's JSON:
    a whole number of tokens (strictly an int there), a decimal amount of USD."""
    budgets: dict[str, Any] = {}
    if tokens.strip():
        try:
            budgets["monthly_token_budget"] = int(tokens)
        except ValueError:
            budgets["monthly_token_budget"] = tokens  # refused by KeyCreate: not a whole number
    if cost.strip():
        budgets["monthly_cost_budget"] = cost.strip()
    return budgets


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    visit: TenantVisitDep,
    access: AccessDep,
    settings: SettingsDep,
    key_id: Annotated[str, Path(max_length=40)],
    csrf: CsrfField = None,
) -> Response:
    visit.check_csrf(csrf)
    _check_may_manage_keys(settings)
    tenant = visit.principal
    try:
        await access.revoke_key(tenant.tenant_id, key_id, visit.actor, by_key=tenant.key_id)
    except PermissionDenied as exc:
        raise Refused(exc.message) from exc
    return RedirectResponse("/console/keys", 303)


def _shell_page(template: str) -> Any:
    """A page whose data its own script reads from the APIs: the route only checks who may see it."""

    async def shell(request: Request, visit: TenantVisitDep, catalog: CatalogDep) -> HTMLResponse:
        return page(request, template, session=visit.session, calls=teaching_calls(request, catalog))

    return shell


@router.get("/aliases")
async def aliases_page(request: Request, visit: TenantVisitDep, catalog: CatalogDep) -> HTMLResponse:
    """The tenant's aliases, read by the page's script from ``/v1/aliases``."""
    calls = teaching_calls(request, catalog)
    return page(request, "aliases.html", session=visit.session, api_base="/v1/aliases", calls=calls)


for _path, _template in (
    ("/playground", "playground.html"),
    ("/models", "models.html"),
    ("/evaluations", "evaluations.html"),
    ("/fine-tuning", "fine_tuning.html"),
):
    router.add_api_route(_path, _shell_page(_template), methods=["GET"])
