"""The usage ledger's rows: one ``UsageEntry`` per admitted request or fine-tuning job, written idempotently
(a ``request_id`` already in the ledger is skipped, so a retried batch or a replayed spool never counts twice),
and the month-to-date totals a limiter starts a budget from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapters.store import FineTuningJob
from gateway.accounting.limits import BudgetSnapshot, OpenReservation
from gateway.db import Database, UsageRecord
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

    def row(self) -> dict[str, Any]:
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # shallow: cheap
        values["cost"] = nanos_to_usd(values.pop("cost_nanos"))
        return values

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "created_at": self.created_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageEntry:
        return cls(**{**data, "created_at": datetime.fromisoformat(data["created_at"])})


def insert_usage(session: Session, entries: list[UsageEntry]) -> None:
    """Insert the entries in the session's transaction; entries whose ``request_id`` is already there are skipped."""
    if not entries:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # On the table, not the ORM class: a plain executemany, without the ORM's bulk-insert machinery per row.
    statement = insert(UsageRecord.__table__).on_conflict_do_nothing(index_elements=["request_id"])
    session.execute(statement, [entry.row() for entry in entries])


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> [first instant, first instant of the next month)."""
    year, number = (int(part) for part in month.split("-"))
    start = datetime(year, number, 1)
    return start, datetime(year + number // 12, number % 12 + 1, 1)


class UsageLedger:
    """The ledger table: written by the ledger writer, read for budgets."""

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
