"""How a change to keys or tenants ends the console sessions derived from them: in the transaction of that
change (revoking a key, suspending or deleting a tenant), so no gateway serves such a session once the change
is committed. Each ended session gets an audit entry in the same transaction.

Session rows are keyed by a hash of the random id the cookie carries (``gateway.tenancy.console_sessions`` starts, reads
and signs them out): a read of the table yields no usable session."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from gateway.audit import Actor, record
from gateway.db import ConsoleSession


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def end_sessions(session: Session, actor: Actor, reason: str, where: ColumnElement[bool], now: datetime) -> int:
    """End every live session matching ``where`` in ``session``'s transaction, each with an audit entry."""
    rows = session.scalars(select(ConsoleSession).where(where, ConsoleSession.ended_at.is_(None))).all()
    for row in rows:
        row.ended_at = now
        record(session, actor, "session.end", "console_session", row.id, row.tenant_id, {"reason": reason})
    return len(rows)
