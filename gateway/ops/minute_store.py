"""Where every gateway's per-minute counts (``gateway.ops.minutes``) meet: the ``service_minutes`` table. A gateway
writes the minutes it counted in every few seconds (and before its own service page reads), overwriting its own
rows, and drops rows older than the longest window; a read merges every gateway's rows into the rolling windows.
Off the request path: the flusher runs beside the app, its database calls on a worker thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from starlette.concurrency import run_in_threadpool

from gateway.db import Database, ServiceMinute
from gateway.ops.minutes import KEPT_MINUTES, MinuteCounts, recent

log = logging.getLogger("llmaas.service_minutes")
FLUSH_SECONDS = 5.0
"""How often a gateway writes its minutes: what another gateway's service page lags behind at most."""


class MinuteStore:
    def __init__(
        self, database: Database, gateway_id: str, counts: MinuteCounts, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = database
        self._gateway_id = gateway_id
        self._counts = counts
        self._clock = clock

    def flush(self) -> None:
        """Write this gateway's changed minutes (whole) and drop every gateway's minutes past the longest window."""
        changed = self._counts.take_changed()
        try:
            self._write(changed)
        except BaseException:
            self._counts.mark_changed(changed)  # written on the next try
            raise

    def _write(self, changed: dict[int, dict[str, Any]]) -> None:
        oldest = int(self._clock() // 60) - KEPT_MINUTES
        with self._db.session() as session:
            if changed:
                insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
                statement = insert(cast(Table, ServiceMinute.__table__))
                upsert = statement.on_conflict_do_update(
                    index_elements=["gateway_id", "minute"], set_={"counts": statement.excluded.counts}
                )
                rows = [
                    {"gateway_id": self._gateway_id, "minute": minute, "counts": counts}
                    for minute, counts in changed.items()
                ]
                session.execute(upsert, rows)
            session.execute(delete(ServiceMinute).where(ServiceMinute.minute < oldest))

    def recent(self) -> dict[str, Any]:
        """The last 1, 5 and 15 minutes of every gateway on this database, and each minute of them
        (``gateway.ops.minutes.recent``), this gateway's counts written first."""
        self.flush()
        now_minute = int(self._clock() // 60)
        with self._db.session() as session:
            rows = session.execute(
                select(ServiceMinute.minute, ServiceMinute.counts).where(
                    ServiceMinute.minute > now_minute - KEPT_MINUTES
                )
            ).all()
        return recent(((minute, counts) for minute, counts in rows), now_minute)

    async def run(self, interval_seconds: float) -> None:
        """Flush every ``interval_seconds`` until cancelled (then once more, so a stopping gateway's last requests
        still count)."""
        try:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await run_in_threadpool(self.flush)
                except Exception:  # the database away for a moment: the counts stay in memory for the next try
                    log.warning("could not write the service minutes; retrying", exc_info=True)
        finally:
            try:
                await run_in_threadpool(self.flush)
            except Exception:
                log.warning("could not write the last service minutes", exc_info=True)
