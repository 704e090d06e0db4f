"""The audit log's writer: who did what to tenants, keys, models, files and sessions.

Entries are appended in the same database transaction as the change they describe (so a change is never
without its entry, nor an entry without its change) and never updated or deleted through the API. An entry
holds ids and names, never content (no prompt, file body or key secret)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from gateway.db import AuditEntry

OPERATOR = "operator"
SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """Who acts, and from where: ``operator``, ``system`` or a tenant key's id (with its tenant)."""

    actor: str
    tenant_id: str | None = None
    request_id: str | None = None
    client_address: str | None = None


SYSTEM_ACTOR = Actor(SYSTEM)
"""Work the service does on its own (retention purges, the CLI without a request). The actor of an HTTP request
is its context's (``gateway.context.RequestContext.actor``)."""


def record(
    session: Session,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | None,
    tenant_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry in ``session``'s transaction (it commits with the change it describes)."""
    session.add(
        AuditEntry(
            at=datetime.now(UTC).replace(tzinfo=None),
            actor=actor.actor,
            actor_tenant_id=actor.tenant_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            tenant_id=tenant_id,
            request_id=actor.request_id,
            client_address=actor.client_address,
            details=details,
        )
    )
