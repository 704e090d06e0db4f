"""The audit log's read side: who did what, newest first, filtered by tenant, actor, action and time, paged by
entry id (``after``: the ``last_id`` of the previous page). What ``GET /admin/v1/audit``, ``llmaas audit`` and
the console's audit page show. Nothing here writes: the log is appended by ``gateway.audit`` only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import select

from adapters.pagination import CursorPage, keyset_page
from gateway.bounds import UtcDateTime
from gateway.db import AuditEntry, Database, Tenant

MAX_PAGE = 1000


@dataclass
class AuditFilters:
    """Query parameters of the audit log (FastAPI reads them from the query string)."""

    tenant: Annotated[str | None, Query(max_length=64, description="a tenant's name or id")] = None
    actor: Annotated[str | None, Query(max_length=64, description="operator, system, or a key's id")] = None
    action: Annotated[
        str | None, Query(max_length=64, description="an action (tenant.delete), or its prefix ending in '.'")
    ] = None
    since: UtcDateTime | None = None
    until: UtcDateTime | None = None
    after: Annotated[int | None, Query(ge=0, le=2**62, description="entries older than this id")] = None
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100


class AuditEntryOut(BaseModel):
    id: int
    object: Literal["audit.entry"] = "audit.entry"
    at: str
    """ISO 8601, UTC (``Z``)."""
    actor: str
    actor_tenant_id: str | None
    action: str
    target_type: str
    target_id: str | None
    tenant_id: str | None
    request_id: str | None
    client_address: str | None
    details: dict[str, Any] | None


class AuditPage(CursorPage[AuditEntryOut, int]):
    """A page of the audit log, newest first (``after``: the ``last_id``)."""


def entry_object(row: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        id=row.id,
        at=row.at.isoformat() + "Z",
        actor=row.actor,
        actor_tenant_id=row.actor_tenant_id,
        action=row.action,
        target_type=row.target_type,
        target_id=row.target_id,
        tenant_id=row.tenant_id,
        request_id=row.request_id,
        client_address=row.client_address,
        details=row.details,
    )


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def page(self, filters: AuditFilters) -> AuditPage:
        """One page of entries, newest first. ``filters.tenant``: a tenant's name or id (a deleted one's id)."""
        query = select(AuditEntry)
        if filters.actor:
            query = query.where(AuditEntry.actor == filters.actor)
        if filters.action and filters.action.endswith("."):
            query = query.where(AuditEntry.action.startswith(filters.action, autoescape=True))
        elif filters.action:
            query = query.where(AuditEntry.action == filters.action)
        if filters.since is not None:
            query = query.where(AuditEntry.at >= filters.since)
        if filters.until is not None:
            query = query.where(AuditEntry.at < filters.until)
        after = None if filters.after is None else (filters.after,)
        with self._db.session() as session:
            if filters.tenant:
                named = session.scalar(select(Tenant.id).where(Tenant.name == filters.tenant))
                query = query.where(AuditEntry.tenant_id == (named or filters.tenant))
            rows, more = keyset_page(session, query, (AuditEntry.id,), after, filters.limit, descending=True)
        return AuditPage.of([entry_object(row) for row in rows], more)
