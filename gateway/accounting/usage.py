"""Usage reports from the ledger, as the admin API, ``GET /v1/usage`` and the CLI serve them: the query's
filters, the ``group_by`` list, sums per period, and the JSON or CSV response."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import time
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import Query, Response
from sqlalchemy import Label, case, func, select

from gateway import bounds
from gateway.accounting.schemas import UsageReport
from gateway.bounds import UtcDateTime
from gateway.db import Database, UsageDaily, UsageRecord
from gateway.errors import InvalidRequestError

Bucket = Literal["hour", "day", "month", "none"]
GroupField = Literal["tenant", "key", "model", "kind"]
GROUP_FIELDS: tuple[GroupField, ...] = ("tenant", "key", "model", "kind")
_COLUMNS: dict[GroupField, Label[Any]] = {
    "tenant": UsageRecord.tenant_id.label("tenant_id"),
    "key": UsageRecord.key_id.label("key_id"),
    "model": UsageRecord.model.label("model"),
    "kind": UsageRecord.kind.label("kind"),
}


@dataclass
class UsageFilters:
    """Query parameters both usage routes take (FastAPI reads them from the query string)."""

    key_id: Annotated[str | None, Query(max_length=40)] = None
    model: Annotated[str | None, Query(max_length=bounds.MODEL)] = None
    since: UtcDateTime | None = None
    until: UtcDateTime | None = None
    bucket: Bucket = "day"
    format: Literal["json", "csv"] = "json"


def parse_group_by(value: str) -> tuple[GroupField, ...]:
    fields = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        shown = ", ".join(part[:20] for part in unknown[:5])
        raise InvalidRequestError(f"group_by takes {', '.join(GROUP_FIELDS)}; not {shown}", param="group_by")
    return tuple(f for f in GROUP_FIELDS if f in fields)


class UsageReports:
    def __init__(self, database: Database) -> None:
        self._db = database

    def report(self, tenant_id: str | None, filters: UsageFilters, group_by: tuple[GroupField, ...]) -> dict[str, Any]:
        """Requests, tokens and cost per group and period (``tenant_id`` None: every tenant). Whole days (no hour
        buckets, bounds at midnight) are read from the daily sums; anything finer from the ledger itself."""
        with self._db.session() as session:
            if _whole_days(filters):
                query = _daily_query(tenant_id, filters, group_by)
            else:
                query = _ledger_query(session.get_bind().dialect.name, tenant_id, filters, group_by)
            rows = [dict(row._mapping) for row in session.execute(query)]
        data = [_usage_row(row) for row in rows if row["requests"]]
        totals: dict[str, Any] = {
            name: sum(row[name] for row in data)
            for name in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens")
        }
        totals["cost"] = str(sum((Decimal(row["cost"]) for row in data), Decimal(0)))
        return {"object": "list", "data": data, "totals": totals}


def _whole_days(filters: UsageFilters) -> bool:
    at_midnight = (bound is None or bound.time() == time(0) for bound in (filters.since, filters.until))
    return filters.bucket != "hour" and all(at_midnight)


def _sums(records: Any, requests: Any) -> list[Any]:
    """The summed columns of a report, from the ledger's rows or the daily sums (``requests``: how to count)."""
    return [
        requests.label("requests"),
        func.coalesce(func.sum(records.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(records.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(records.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(records.cost), 0).label("cost"),
    ]


def _ledger_query(dialect: str, tenant_id: str | None, filters: UsageFilters, group_by: tuple[GroupField, ...]) -> Any:
    columns: list[Any] = [_COLUMNS[name] for name in group_by]
    if filters.bucket != "none":
        columns.append(_bucket_expr(dialect, filters.bucket).label("period_start"))
    query = select(*columns, *_sums(UsageRecord, func.count()))
    for column, value in (
        (UsageRecord.tenant_id, tenant_id),
        (UsageRecord.key_id, filters.key_id),
        (UsageRecord.model, filters.model),
    ):
        if value:
            query = query.where(column == value)
    if filters.since:
        query = query.where(UsageRecord.created_at >= filters.since)
    if filters.until:
        query = query.where(UsageRecord.created_at < filters.until)
    return query.group_by(*columns).order_by(*columns) if columns else query


def _daily_query(tenant_id: str | None, filters: UsageFilters, group_by: tuple[GroupField, ...]) -> Any:
    daily = UsageDaily
    key = case((daily.key_id == "", None), else_=daily.key_id)
    by_name = {"tenant": daily.tenant_id, "key": key, "model": daily.model, "kind": daily.kind}
    columns: list[Any] = [by_name[name].label(_COLUMNS[name].name) for name in group_by]
    if filters.bucket == "day":
        columns.append(daily.day.label("period_start"))
    elif filters.bucket == "month":
        columns.append(func.substr(daily.day, 1, 7).label("period_start"))
    query = select(*columns, *_sums(daily, func.sum(daily.requests)))
    for column, value in ((daily.tenant_id, tenant_id), (daily.key_id, filters.key_id), (daily.model, filters.model)):
        if value:
            query = query.where(column == value)
    if filters.since:
        query = query.where(daily.day >= filters.since.date().isoformat())
    if filters.until:
        query = query.where(daily.day < filters.until.date().isoformat())
    return query.group_by(*columns).order_by(*columns) if columns else query


def usage_response(report: dict[str, Any], format: Literal["json", "csv"]) -> Response | UsageReport:
    if format == "csv":
        return Response(
            usage_csv(report),
            media_type="text/csv",
            headers={"content-disposition": 'attachment; filename="usage.csv"'},
        )
    return UsageReport.model_validate(report)


def _bucket_expr(dialect: str, bucket: Bucket) -> Any:
    column = UsageRecord.created_at
    if dialect == "postgresql":
        fmt = {"hour": 'YYYY-MM-DD"T"HH24:00:00', "day": "YYYY-MM-DD", "month": "YYYY-MM"}[bucket]
        return func.to_char(func.date_trunc(bucket, column), fmt)
    fmt = {"hour": "%Y-%m-%dT%H:00:00", "day": "%Y-%m-%d", "month": "%Y-%m"}[bucket]
    return func.strftime(fmt, column)


def _usage_row(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["prompt_tokens"] = int(row["prompt_tokens"])
    row["cached_tokens"] = int(row["cached_tokens"])
    row["completion_tokens"] = int(row["completion_tokens"])
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["requests"] = int(row["requests"])
    row["cost"] = str(Decimal(row["cost"]).normalize() if row["cost"] else Decimal(0))
    return row


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP's CSV injection list)."""


def _inert(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (a tenant's key named ``=HYPERLINK(...)``), quoted as text;
    numbers as they are."""
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def usage_csv(report: dict[str, Any]) -> str:
    """The report's rows as CSV, each text cell safe to open in a spreadsheet (tenants name their keys)."""
    rows = [{field: _inert(value) for field, value in row.items()} for row in report["data"]]
    out = io.StringIO()
    fields = (
        list(rows[0].keys())
        if rows
        else ["requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "cost"]
    )
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
