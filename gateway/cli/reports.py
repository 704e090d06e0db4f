"""``llmaas usage`` and ``llmaas audit``: usage by tenant, key, model and period, and the audit log, read from the
database directly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer

from gateway.cli import common


def usage(
    tenant: str | None = typer.Argument(None, help="A tenant's name or id; all tenants if omitted."),
    since: datetime | None = typer.Option(None, help="From this UTC date/time (inclusive)."),
    until: datetime | None = typer.Option(None, help="Until this UTC date/time (exclusive)."),
    bucket: str = typer.Option("day", help="hour, day, month or none."),
    group_by: str = typer.Option("tenant,key,model,kind", help="Comma-separated: tenant, key, model, kind."),
    csv: bool = typer.Option(False, "--csv", help="CSV instead of JSON."),
) -> None:
    """Usage by tenant, key, model and period."""
    from gateway.accounting.usage import UsageFilters, UsageReports, parse_group_by, usage_csv

    if bucket not in ("hour", "day", "month", "none"):
        raise typer.BadParameter("bucket is one of hour, day, month, none")

    def report() -> Any:
        tenant_id = common.tenancy().get_tenant(tenant).id if tenant else None
        filters = UsageFilters(since=since, until=until, bucket=bucket)  # type: ignore[arg-type]
        return UsageReports(common.database()).report(tenant_id, filters, parse_group_by(group_by))

    if csv:
        typer.echo(usage_csv(report()), nl=False)
    else:
        common.run(report)


def audit_log(
    tenant: str | None = typer.Option(None, help="A tenant's name or id (a deleted tenant's id)."),
    actor: str | None = typer.Option(None, help="operator, system, or a key's id."),
    action: str | None = typer.Option(None, help="An action (tenant.delete), or its prefix ending in '.'."),
    since: datetime | None = typer.Option(None, help="From this UTC date/time (inclusive)."),
    until: datetime | None = typer.Option(None, help="Until this UTC date/time (exclusive)."),
    limit: int = typer.Option(100, min=1, max=1000, help="Entries per page."),
    after: int | None = typer.Option(None, help="Entries older than this id (the previous page's last_id)."),
) -> None:
    """The audit log, newest first: who did what to tenants, keys, models, files and sessions."""
    from gateway.audit_log import AuditFilters, AuditLog

    filters = AuditFilters(
        tenant=tenant, actor=actor, action=action, since=since, until=until, after=after, limit=limit
    )
    common.run(lambda: AuditLog(common.database()).page(filters))
