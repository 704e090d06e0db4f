"""The usage ledger's rows: one ``UsageEntry`` per admitted request or fine-tuning job, written idempotently
(a ``request_id`` already in the ledger is skipped, so a retried batch or a replayed journal never counts twice),
and the month-to-date totals a limiter starts a budget from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapters.store import FineTuningJob
from gateway.accounting.limits import BudgetSnapshot, OpenReservation
from gateway.db import Database, UsageDaily, UsageRecord
from gateway.tenancy.models import nanos_to_usd, usd_to_nanos


@dataclass(frozen=True)
class UsageEntry:
    request_id: str
    """The server's id of the request (or the job's id): unique in the ledger."""
    tenant_id: str
    key_id: str | None
    model: str
    kind: str
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    created_at: datetime
    end_user: str | None = None
    client_request_id: str | None = None
    cached_tokens: int = 0
    """Of ``prompt_tokens``, those the engine read from its prefix cache (charged at the cached-input price). A
    journal written before it existed replays as 0."""

    def row(self) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # shallow: cheap
        values["cost"] = nanos_to_usd(values.pop("cost_nanos"))
        return values

    def to_json(self) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # shallow: cheap
        return {**values, "created_at": self.created_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageEntry:
        return cls(**{**data, "created_at": datetime.fromisoformat(data["created_at"])})


def insert_usage(session: Session, entries: list[UsageEntry]) -> None:
    """Insert the entries in the session's transaction; entries whose ``request_id`` is already there are skipped.
    The daily sums (``usage_daily``) grow by exactly the rows inserted, in the same transaction."""
    if not entries:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # On the table, not the ORM class: a plain executemany, without the ORM's bulk-insert machinery per row.
    table = cast(Table, UsageRecord.__table__)
    statement = insert(table).on_conflict_do_nothing(index_elements=["request_id"]).returning(table.c.request_id)
    inserted = set(session.scalars(statement, [entry.row() for entry in entries]))
    sums: dict[tuple[str, str, str, str, str], list[Any]] = {}
    for entry in entries:
        if entry.request_id not in inserted:
            continue
        inserted.discard(entry.request_id)  # one entry per id, should a batch hold the same id twice
        group = (entry.tenant_id, entry.created_at.strftime("%Y-%m-%d"), entry.key_id or "", entry.model, entry.kind)
        total = sums.setdefault(group, [0, 0, 0, 0, 0])
        total[0] += 1
        total[1] += entry.prompt_tokens
        total[2] += entry.completion_tokens
        total[3] += entry.cached_tokens
        total[4] += entry.cost_nanos
    if not sums:
        return
    daily = insert(cast(Table, UsageDaily.__table__))
    upsert = daily.on_conflict_do_update(
        index_elements=["tenant_id", "day", "key_id", "model", "kind"],
        set_={
            column: getattr(UsageDaily.__table__.c, column) + getattr(daily.excluded, column)
            for column in ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost")
        },
    )
    session.execute(
        upsert,
        [
            {
                "tenant_id": tenant_id,
                "day": day,
                "key_id": key_id,
                "model": model,
                "kind": kind,
                "requests": requests,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cached_tokens": cached,
                "cost": nanos_to_usd(cost),
            }
            for (tenant_id, day, key_id, model, kind), (requests, prompt, completion, cached, cost) in sums.items()
        ],
    )


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> [first instant, first instant of the next month)."""
    year, number = (int(part) for part in month.split("-"))
    start = datetime(year, number, 1)
    return start, datetime(year + number // 12, number % 12 + 1, 1)


class UsageLedger:
    """The ledger table: written by the ledger writer, read for budgets (a tenant's; a key's from the daily
    sums)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def write(self, entries: list[UsageEntry]) -> None:
        with self._db.session() as session:
            insert_usage(session, entries)

    def budget_snapshot(self, tenant_id: str, month: str) -> BudgetSnapshot:
        """The month's totals, without the charges of fine-tuning jobs whose reservation is still open, and those
        open reservations: one consistent read, so no job is counted as both or neither."""
        start, end = month_bounds(month)
        with self._db.sessions() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            open_jobs = select(FineTuningJob.id).where(
                FineTuningJob.tenant_id == tenant_id, FineTuningJob.budget_released_at.is_(None)
            )
            tokens, cost = session.execute(
                select(
                    func.coalesce(func.sum(UsageRecord.prompt_tokens + UsageRecord.completion_tokens), 0),
                    func.coalesce(func.sum(UsageRecord.cost), 0),
                ).where(
                    UsageRecord.tenant_id == tenant_id,
                    UsageRecord.created_at >= start,
                    UsageRecord.created_at < end,
                    UsageRecord.request_id.not_in(open_jobs),
                )
            ).one()
            reservations = session.execute(
                select(FineTuningJob.id, FineTuningJob.estimated_tokens, FineTuningJob.reserved_cost_nanos).where(
                    FineTuningJob.tenant_id == tenant_id,
                    FineTuningJob.budget_released_at.is_(None),
                    FineTuningJob.created_at >= start,
                    FineTuningJob.created_at < end,
                )
            ).all()
        return BudgetSnapshot(
            used_tokens=int(tokens),
            used_cost_nanos=usd_to_nanos(Decimal(cost)),
            open_reservations=tuple(OpenReservation(job_id, int(t), int(c)) for job_id, t, c in reservations),
        )

    def key_budget_snapshot(self, tenant_id: str, key_id: str, month: str) -> BudgetSnapshot:
        """A key's month so far, from the daily sums (its requests only: fine-tuning jobs are the tenant's, under
        no key), for its own budgets."""
        start, end = month_bounds(month)
        with self._db.sessions() as session:
            tokens, cost = session.execute(
                select(
                    func.coalesce(func.sum(UsageDaily.prompt_tokens + UsageDaily.completion_tokens), 0),
                    func.coalesce(func.sum(UsageDaily.cost), 0),
                ).where(
                    UsageDaily.tenant_id == tenant_id,
                    UsageDaily.day >= start.date().isoformat(),
                    UsageDaily.day < end.date().isoformat(),
                    UsageDaily.key_id == key_id,
                )
            ).one()
        return BudgetSnapshot(used_tokens=int(tokens), used_cost_nanos=usd_to_nanos(Decimal(cost)))
