"""The loop of a runner of leased work (eval runs, batches): claim the next piece from the database, execute it,
again; wait ``poll`` seconds when there is none or while the gateway drains (a gateway going away takes no new
work), and log and go on when one fails."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)


async def claim_forever(
    claim: Callable[[], str | None],
    execute: Callable[[str], Awaitable[None]],
    draining: Callable[[], bool],
    poll: float,
    what: str,
) -> None:
    while True:
        try:
            if draining():
                await asyncio.sleep(poll)
                continue
            claimed = await run_in_threadpool(claim)
            if claimed is None:
                await asyncio.sleep(poll)
                continue
            await execute(claimed)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("the %s failed; going on", what)
            await asyncio.sleep(poll)
