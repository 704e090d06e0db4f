"""Leases on claimed background work, written once for every kind of it: fine-tuning jobs (``adapters.worker``),
eval runs (``gateway.evals.runner``) and the release of fine-tuning budgets (``gateway.accounting``).

A leased row has a status, an owner column and a heartbeat column. ``Lease.claim`` makes a free row (one of the
waiting statuses, no owner) or, where takeover is allowed, one whose owner stopped heartbeating, the caller's:
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, then on any database a compare-and-set ``UPDATE`` that only
one claimer can win. ``Lease.heartbeat`` renews it while the row is still the owner's and in a status the owner
expects (False tells the owner to stop: cancelled, deleted, or taken over). Every other change is a
``compare_and_set``: the ``UPDATE`` happens only where the row is as the caller expects it, and says whether it
did. Sessions are the caller's: each call runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

__all__ = ["Lease", "compare_and_set"]


def compare_and_set(
    session: Session, entity: type[Any], where: Collection[ColumnElement[bool]], values: Mapping[str, Any]
) -> bool:
    """``UPDATE entity SET values WHERE where``: whether a row was changed (the caller's expectation held)."""
    statement = update(entity).where(*where).values(dict(values)).execution_options(synchronize_session=False)
    result = cast("CursorResult[Any]", session.execute(statement))
    return bool(result.rowcount)


@dataclass(frozen=True)
class Lease:
    """How the rows of one table are leased: which columns hold the status, the owner and the heartbeat."""

    entity: type[Any]
    id: InstrumentedAttribute[str]
    status: InstrumentedAttribute[str]
    owner: InstrumentedAttribute[str | None]
    heartbeat: InstrumentedAttribute[datetime | None]
    order: InstrumentedAttribute[datetime]
    """Claims take the oldest row first by this column."""

    @classmethod
    def on(cls, entity: type[Any], owner: InstrumentedAttribute[str | None]) -> Lease:
        """A lease on ``entity``'s rows held in ``owner``, by the usual columns: ``id``, ``status``,
        ``heartbeat_at``, and the oldest ``created_at`` claimed first."""
        return cls(entity, entity.id, entity.status, owner, entity.heartbeat_at, entity.created_at)

    def expired(self, stale_before: datetime) -> tuple[ColumnElement[bool], ...]:
        """An owned row whose owner has not heartbeaten since ``stale_before``."""
        return self.owner.is_not(None), self.heartbeat < stale_before

    def _claimable(
        self, free: Collection[str], takeover: Collection[str], stale_before: datetime | None
    ) -> ColumnElement[bool]:
        unowned = and_(self.status.in_(free), self.owner.is_(None))
        if not takeover or stale_before is None:
            return unowned
        return or_(unowned, and_(self.status.in_(takeover), *self.expired(stale_before)))

    def claim(
        self,
        session: Session,
        owner: str,
        now: datetime,
        *,
        free: Collection[str],
        takeover: Collection[str] = (),
        stale_before: datetime | None = None,
        where: Collection[ColumnElement[bool]] = (),
        **values: Any,
    ) -> str | None:
        """The oldest row in a ``free`` status with no owner (or in a ``takeover`` status whose lease expired
        before ``stale_before``), where ``where`` holds, now ``owner``'s with a fresh heartbeat and ``values`` set;
        None if none is."""
        claimable = and_(self._claimable(free, takeover, stale_before), *where)
        locking = session.get_bind().dialect.name == "postgresql"
        query = select(self.id).where(claimable).order_by(self.order).limit(1 if locking else 5)
        if locking:  # another claimer skips the row this one holds
            query = query.with_for_update(skip_locked=True)
        for row_id in session.scalars(query).all():
            taken = {self.owner.key: owner, self.heartbeat.key: now, **values}
            if compare_and_set(session, self.entity, (self.id == row_id, claimable), taken):
                return row_id
        return None

    def heartbeat_of(
        self,
        session: Session,
        row_id: str,
        owner: str,
        now: datetime,
        *,
        statuses: Collection[str],
        where: Collection[ColumnElement[bool]] = (),
    ) -> bool:
        """Renew ``owner``'s lease on the row if it is still theirs, in one of ``statuses`` (and ``where`` holds);
        False when it is not: the owner stops working on it."""
        return compare_and_set(
            session,
            self.entity,
            (self.id == row_id, self.owner == owner, self.status.in_(statuses), *where),
            {self.heartbeat.key: now},
        )

    def expired_ids(self, session: Session, statuses: Collection[str], stale_before: datetime) -> list[str]:
        """Rows in ``statuses`` whose owner stopped heartbeating before ``stale_before``."""
        query = select(self.id).where(self.status.in_(statuses), *self.expired(stale_before))
        return list(session.scalars(query))

    def move(
        self,
        session: Session,
        row_id: str,
        *,
        expected: Collection[str],
        owner: str | None = None,
        where: Collection[ColumnElement[bool]] = (),
        **values: Any,
    ) -> bool:
        """Compare-and-set on the status the caller expects (and, given ``owner``, as its owner)."""
        conditions = [self.id == row_id, self.status.in_(expected), *where]
        if owner is not None:
            conditions.append(self.owner == owner)
        return compare_and_set(session, self.entity, conditions, values)
