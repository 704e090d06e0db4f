"""What the tenant's and the operator's usage pages (and their CSVs) show, built once for both: this month's
reports from the daily sums, each row labelled for people (a key by its name and visible prefix, never its id;
fine-tuning, evaluation and batch usage by what it is; a tenant by its name), and the charts' data — every day
of the month so far, the budgets, and the models billed nothing, so a cost chart can say no price is set rather
than draw a flat $0."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends

from gateway.accounting.pricing import PriceBook
from gateway.accounting.usage import Bucket, GroupField, UsageFilters, UsageReports
from gateway.state import PricesDep, TenancyDep, UsageDep
from gateway.tenancy.principal import TenantPrincipal
from gateway.tenancy.service import TenancyService

SUMMED = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens")
KINDS = {"inference": "", "batch": "batch", "eval": "evaluations", "fine_tune": "fine-tuning"}
"""The ledger's kinds as the pages name them (plain API requests need no word)."""


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def this_month(bucket: Bucket, now: datetime | None = None) -> UsageFilters:
    return UsageFilters(since=month_start(now or datetime.now(UTC)), bucket=bucket)


def used_by(row: Mapping[str, Any], keys: Mapping[str, str]) -> str:
    """Who used it: the key by its label (its id only when the key is gone with its tenant), prefixed by the kind
    of work when it is not a plain API request; fine-tuning jobs have no key."""
    key_id = row.get("key_id")
    key = keys.get(key_id, key_id) if key_id else ""
    kind = KINDS.get(row.get("kind") or "inference", row.get("kind") or "")
    return " · ".join(part for part in (kind, key) if part) or "no key"


def labelled(
    rows: list[dict[str, Any]], keys: Mapping[str, str], tenants: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """The rows with ``used_by`` (and ``key_name``, and ``tenant_name`` where ``tenants`` is given) added."""
    out = []
    for row in rows:
        names: dict[str, Any] = {}
        if tenants is not None and "tenant_id" in row:
            names["tenant_name"] = tenants.get(row["tenant_id"], row["tenant_id"])
        if "key_id" in row:
            names["key_name"] = keys.get(row["key_id"], "") if row["key_id"] else ""
            names["used_by"] = used_by(row, keys)
        out.append({**row, **names})
    return out


def month_totals(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Day rows of a report summed per ``fields`` over the month, in the order of ``fields``."""
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        group = tuple(row[field] for field in fields)
        total = totals.setdefault(
            group, {**dict(zip(fields, group, strict=True)), **dict.fromkeys(SUMMED, 0), "cost": Decimal(0)}
        )
        for name in SUMMED:
            total[name] += row[name]
        total["cost"] += Decimal(row["cost"])
    return [{**total, "cost": str(total["cost"].normalize())} for _, total in sorted(totals.items())]


def chart_data(
    series: list[dict[str, Any]], now: datetime, *, budget: int | None, cost_budget: float | None, unpriced: list[str]
) -> dict[str, Any]:
    """What ``usage.js`` draws: tokens and cost per day of each series (``label``: a model, or a tenant; rows of
    one label and day summed), every day from the 1st to today, the budgets, and the models used this month at no
    price."""
    points: dict[tuple[str, str], list[Any]] = {}
    for row in series:
        point = points.setdefault((row["period_start"], row["label"]), [0, Decimal(0)])
        point[0] += row["total_tokens"]
        point[1] += Decimal(row["cost"])
    return {
        "series": [
            {"period_start": day, "label": label, "total_tokens": tokens, "cost": str(cost)}
            for (day, label), (tokens, cost) in points.items()
        ],
        "budget": budget,
        "cost_budget": cost_budget,
        "unpriced": unpriced,
        "first_day": month_start(now).date().isoformat(),
        "last_day": now.date().isoformat(),
    }


class UsageView:
    """The reports behind the usage pages and CSVs."""

    def __init__(self, usage: UsageReports, tenancy: TenancyService, prices: PriceBook) -> None:
        self._usage = usage
        self._tenancy = tenancy
        self._prices = prices

    def _report(self, tenant_id: str | None, bucket: Bucket, group_by: tuple[GroupField, ...]) -> dict[str, Any]:
        return self._usage.report(tenant_id, this_month(bucket), group_by)

    def tenant_page(self, tenant: TenantPrincipal, now: datetime) -> dict[str, Any]:
        quotas = tenant.identity.quotas
        by_model = self._report(tenant.tenant_id, "day", ("model",))
        by_key = self._report(tenant.tenant_id, "day", ("key", "kind"))
        keys = self._tenancy.key_labels(tenant.tenant_id)
        by_key["data"] = labelled(by_key["data"], keys)
        models = sorted({row["model"] for row in by_model["data"]})
        cost_budget = quotas.monthly_cost_budget_nanos
        chart = chart_data(
            [{**row, "label": row["model"]} for row in by_model["data"]],
            now,
            budget=quotas.monthly_token_budget,
            cost_budget=None if cost_budget is None else cost_budget / 1e9,
            unpriced=self._prices.unpriced(quotas.prices, models),
        )
        return {"by_model": by_model, "by_key": by_key, "chart": chart}

    def operator_page(self, now: datetime) -> dict[str, Any]:
        """One read of the daily sums (every tenant, model and day): the chart per tenant and day, and the table
        per tenant and model summed from it."""
        tenants = {t.id: t for t in self._tenancy.list_tenants()}
        names = {tenant_id: t.name for tenant_id, t in tenants.items()}
        per_day = self._report(None, "day", ("tenant", "model"))
        table = labelled(month_totals(per_day["data"], ("tenant_id", "model")), {}, names)
        unpriced = sorted(
            {
                row["model"]
                for row in table
                if row["tenant_id"] in tenants
                and self._prices.unpriced(tenants[row["tenant_id"]].model_prices, [row["model"]])
            }
        )
        chart = chart_data(
            [{**row, "label": names.get(row["tenant_id"], row["tenant_id"])} for row in per_day["data"]],
            now,
            budget=None,
            cost_budget=None,
            unpriced=unpriced,
        )
        return {"report": {"data": table, "totals": per_day["totals"]}, "chart": chart}

    def tenant_csv(self, tenant_id: str) -> dict[str, Any]:
        report = self._report(tenant_id, "day", ("key", "model", "kind"))
        report["data"] = labelled(report["data"], self._tenancy.key_labels(tenant_id))
        return report

    def operator_csv(self) -> dict[str, Any]:
        report = self._report(None, "day", ("tenant", "key", "model", "kind"))
        names = {t.id: t.name for t in self._tenancy.list_tenants()}
        report["data"] = labelled(report["data"], self._tenancy.key_labels(), names)
        return report


async def _usage_view(usage: UsageDep, tenancy: TenancyDep, prices: PricesDep) -> UsageView:
    return UsageView(usage, tenancy, prices)


UsageViewDep = Annotated[UsageView, Depends(_usage_view)]
