"""When each key was last used, kept off the request's path: authentication notes the time in a dict (no I/O),
and a task of the lifespan writes, every ``flush_seconds``, the keys whose time moved by at least a minute since
this process last wrote them, in one transaction (a busy key costs one row update a minute, however many requests
it sends). A write never moves ``last_used_at`` back, so gateways sharing a database agree; the lifespan writes
once more at shutdown. At most ``flush_seconds`` (plus the minute) late, by design."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from starlette.concurrency import run_in_threadpool

from gateway.clock import utcnow

logger = logging.getLogger(__name__)
STEP = timedelta(minutes=1)
"""A key's time is written again only once it moved by this much."""


class KeyActivity:
    def __init__(self, write: Callable[[dict[str, datetime]], None], clock: Callable[[], datetime] = utcnow) -> None:
        self._write = write
        self._clock = clock
        self._seen: dict[str, datetime] = {}  # key id -> last seen, not written yet
        self._written: dict[str, datetime] = {}  # key id -> what this process last wrote, for a minute

    def seen(self, key_id: str) -> None:
        """The key authenticated a request now."""
        self._seen[key_id] = self._clock()

    async def flush(self) -> None:
        """Write the keys whose time moved by a minute or more (each written at most once a minute)."""
        due = {key: at for key, at in self._seen.items() if key not in self._written or at - self._written[key] >= STEP}
        if due:
            await run_in_threadpool(self._write, due)
        self._written.update(due)
        for key in due:
            if self._seen.get(key) == due[key]:
                del self._seen[key]
        horizon = self._clock() - STEP  # older than a minute: any later use is due anyway
        self._written = {key: at for key, at in self._written.items() if at > horizon}

    async def run(self, flush_seconds: float) -> None:
        while True:
            await asyncio.sleep(flush_seconds)
            try:
                await self.flush()
            except Exception:  # the database away for a moment: the times stay noted for the next round
                logger.warning("writing keys' last use failed", exc_info=True)
