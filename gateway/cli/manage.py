"""``llmaas tenants`` and ``llmaas keys``: tenants and their quotas, keys, a tenant's export and deletion, on the
database directly (no running server needed; a running gateway sees a change within its key-cache TTL)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gateway.cli import common

if TYPE_CHECKING:
    from gateway.tenant_data.erasure import TenantEraser
    from gateway.tenant_data.export import TenantExport

tenants_app = typer.Typer(help="Create and manage tenants and their quotas.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke a tenant's API keys.", no_args_is_help=True)

_QUOTA_HELP = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "max_concurrent": "concurrent requests",
    "monthly_tokens": "token budget per calendar month",
    "monthly_cost": "cost budget per calendar month, USD",
    "max_tokens_cap": "cap on max_tokens",
}


def _quota_fields(
    rpm: int | None,
    tpm: int | None,
    max_concurrent: int | None,
    monthly_tokens: int | None,
    monthly_cost: str | None,
    max_tokens_cap: int | None,
) -> dict[str, Any]:
    given = {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "max_concurrent_requests": max_concurrent,
        "monthly_token_budget": monthly_tokens,
        "monthly_cost_budget": monthly_cost,
        "max_tokens_cap": max_tokens_cap,
    }
    return {name: value for name, value in given.items() if value is not None}


RPM = typer.Option(None, "--rpm", help=_QUOTA_HELP["rpm"])
TPM = typer.Option(None, "--tpm", help=_QUOTA_HELP["tpm"])
CONCURRENT = typer.Option(None, "--max-concurrent", help=_QUOTA_HELP["max_concurrent"])
MONTHLY_TOKENS = typer.Option(None, "--monthly-tokens", help=_QUOTA_HELP["monthly_tokens"])
MONTHLY_COST = typer.Option(None, "--monthly-cost", help=_QUOTA_HELP["monthly_cost"])
CAP = typer.Option(None, "--max-tokens-cap", help=_QUOTA_HELP["max_tokens_cap"])


@tenants_app.command("create")
def tenants_create(
    name: str,
    rpm: int | None = RPM,
    tpm: int | None = TPM,
    max_concurrent: int | None = CONCURRENT,
    monthly_tokens: int | None = MONTHLY_TOKENS,
    monthly_cost: str | None = MONTHLY_COST,
    max_tokens_cap: int | None = CAP,
) -> None:
    """Create a tenant with optional quotas."""
    from gateway.tenancy.models import TenantCreate

    fields = _quota_fields(rpm, tpm, max_concurrent, monthly_tokens, monthly_cost, max_tokens_cap)
    common.run(lambda: common.tenancy().create_tenant(TenantCreate(name=name, **fields)))


@tenants_app.command("update")
def tenants_update(
    tenant: str,
    rpm: int | None = RPM,
    tpm: int | None = TPM,
    max_concurrent: int | None = CONCURRENT,
    monthly_tokens: int | None = MONTHLY_TOKENS,
    monthly_cost: str | None = MONTHLY_COST,
    max_tokens_cap: int | None = CAP,
) -> None:
    """Change a tenant's quotas (only the options given)."""
    from gateway.tenancy.models import TenantUpdate

    fields = _quota_fields(rpm, tpm, max_concurrent, monthly_tokens, monthly_cost, max_tokens_cap)
    common.run(lambda: common.tenancy().update_tenant(tenant, TenantUpdate(**fields)))


@tenants_app.command("list")
def tenants_list() -> None:
    common.run(lambda: common.tenancy().list_tenants())


@tenants_app.command("show")
def tenants_show(tenant: str) -> None:
    common.run(lambda: common.tenancy().get_tenant(tenant))


@tenants_app.command("suspend")
def tenants_suspend(tenant: str) -> None:
    from gateway.tenancy.models import TenantUpdate

    common.run(lambda: common.tenancy().update_tenant(tenant, TenantUpdate(status="suspended")))


@tenants_app.command("resume")
def tenants_resume(tenant: str) -> None:
    from gateway.tenancy.models import TenantUpdate

    common.run(lambda: common.tenancy().update_tenant(tenant, TenantUpdate(status="active")))


def _content_services() -> tuple[TenantEraser, TenantExport]:
    """The tenant eraser and exporter, on the database and the data dir's files and adapters."""
    from gateway.app import adapter_registry, file_store, price_book
    from gateway.tenant_data.erasure import TenantEraser
    from gateway.tenant_data.export import TenantExport

    settings, database = common.settings().gateway, common.database()
    files, registry = file_store(database, settings), adapter_registry(database, settings)
    return TenantEraser(database, files, registry, price_book(settings)), TenantExport(database, files, registry)


@tenants_app.command("delete")
def tenants_delete(tenant: str) -> None:
    """Delete a tenant and everything it owns (files, fine-tuning jobs, adapters, evals, sessions, keys); its
    usage records and audit entries stay. Adapters a running gateway has loaded are unloaded when it evicts
    them; deleting through the admin API unloads them at once."""
    from gateway.audit import SYSTEM_ACTOR

    def erase() -> dict[str, Any]:
        erased = _content_services()[0].erase(tenant, SYSTEM_ACTOR)
        return {"id": erased.tenant_id, "deleted": True, "removed": erased.counts}

    common.run(erase)


@tenants_app.command("export")
def tenants_export(
    tenant: str, output: str = typer.Option(..., "--output", "-o", help="The archive to write (tar.gz, 0600).")
) -> None:
    """Write everything a tenant owns (files, adapters, jobs, evals, usage, keys without secrets) to a tar.gz."""
    from gateway.audit import SYSTEM_ACTOR
    from gateway.private_files import open_private

    def export() -> dict[str, Any]:
        exports = _content_services()[1]
        tenant_id, _ = exports.begin(tenant, SYSTEM_ACTOR)
        with os.fdopen(open_private(Path(output)), "wb") as out:
            exports.write(tenant_id, out)
        return {"id": tenant_id, "archive": output, "bytes": os.path.getsize(output)}

    common.run(export)


@keys_app.command("create")
def keys_create(
    tenant: str,
    name: str = typer.Option("", help="A label for the key."),
    expires_in_days: float | None = typer.Option(None, help="The key stops working after this many days."),
    model: list[str] | None = typer.Option(None, "--model", help="Restrict the key to this model (repeatable)."),
    key_manager: bool = typer.Option(False, "--key-manager", help="The key may revoke the tenant's other keys."),
    monthly_token_budget: int | None = typer.Option(None, help="The key's own monthly token budget."),
    monthly_cost_budget: str | None = typer.Option(None, help="The key's own monthly budget in USD."),
) -> None:
    """Create an API key; the secret is printed once and never stored."""
    from gateway.audit import OPERATOR, Actor
    from gateway.tenancy.models import KeyCreate

    def create() -> object:
        body = KeyCreate.model_validate(
            {
                "name": name,
                "expires_in_days": expires_in_days,
                "allowed_models": model or None,
                "key_manager": key_manager,
                "monthly_token_budget": monthly_token_budget,
                "monthly_cost_budget": monthly_cost_budget,
            }
        )
        return common.tenancy().create_key(tenant, body, actor=Actor(OPERATOR))

    common.run(create)


@keys_app.command("list")
def keys_list(tenant: str) -> None:
    common.run(lambda: common.tenancy().list_keys(tenant))


@keys_app.command("revoke")
def keys_revoke(tenant: str, key_id: str) -> None:
    from gateway.audit import OPERATOR, Actor

    common.run(lambda: common.tenancy().revoke_key(tenant, key_id, actor=Actor(OPERATOR)))
