"""Usage reports as the admin API, ``GET /v1/usage`` and the CLI serve them: the query's filters, the
``group_by`` list, and the JSON or CSV response."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi import Response

from gateway.errors import InvalidRequestError
from gateway.tenancy.service import Bucket, GroupField, TenancyService, usage_csv

GROUP_FIELDS = ("tenant", "key", "model", "kind")


@dataclass
class UsageFilters:
    """Query parameters both usage routes take (FastAPI reads them from the query string)."""

    key_id: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    bucket: Bucket = "day"
    format: Literal["json", "csv"] = "json"


def parse_group_by(value: str) -> tuple[GroupField, ...]:
    fields = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        raise InvalidRequestError(
            f"group_by takes {', '.join(GROUP_FIELDS)}; not {', '.join(unknown)}", param="group_by"
        )
    return fields  # type: ignore[return-value]


def usage_report(
    service: TenancyService, tenant: str | None, filters: UsageFilters, group_by: str
) -> Response | dict[str, Any]:
    report = service.usage(
        tenant=tenant,
        key_id=filters.key_id,
        model=filters.model,
        since=filters.since,
        until=filters.until,
        group_by=parse_group_by(group_by),
        bucket=filters.bucket,
    )
    if filters.format == "csv":
        return Response(
            usage_csv(report),
            media_type="text/csv",
            headers={"content-disposition": 'attachment; filename="usage.csv"'},
        )
    return report
