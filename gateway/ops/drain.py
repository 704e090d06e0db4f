"""Serving with a graceful drain: on SIGTERM the gateway stops admitting (new requests get a 503 with
``retry-after``, ``/ready`` a 503 "draining", so a load balancer moves on), lets the requests it admitted
finish for up to ``LLMAAS_DRAIN_SECONDS``, cuts those still running then (charged as failures of ours: the
client pays for what it received), and stops; the app's shutdown then writes the ledger (its journal is
already durable). A second SIGTERM, or SIGINT, stops at once as uvicorn does."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.accounting.admission import Admission

logger = logging.getLogger(__name__)
_CUT_GRACE_SECONDS = 1
"""After the deadline: how long the requests cut get to end their responses and settle."""


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, admission: Callable[[], Admission], drain_seconds: float) -> None:
        super().__init__(config)
        self._admission = admission
        self._drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or not self.started or self._loop is None or self._drain is not None:
            super().handle_exit(sig, frame)
            return
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        admission = self._admission()
        admission.stop_admitting()
        logger.warning("SIGTERM: draining %d request(s), for at most %.0f s", admission.in_flight, self._drain_seconds)
        deadline = time.monotonic() + self._drain_seconds
        while admission.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if admission.in_flight:
            logger.warning("the drain's deadline passed: cutting %d request(s)", admission.in_flight)
            admission.interrupt()
            for task in list(self.server_state.tasks):
                task.cancel()
            cut_deadline = time.monotonic() + _CUT_GRACE_SECONDS
            while self.server_state.tasks and time.monotonic() < cut_deadline:
                await asyncio.sleep(0.05)
        self.should_exit = True


def serve(
    app: FastAPI,
    admission: Callable[[], Admission],
    drain_seconds: float,
    sockets: list[socket.socket] | None = None,
    **config: Any,
) -> None:
    """Run the app under uvicorn (``config``: ``uvicorn.Config``'s options) with the graceful drain; ``admission``:
    the app's, once its lifespan has built it."""
    server_config = uvicorn.Config(app, timeout_graceful_shutdown=_CUT_GRACE_SECONDS, **config)
    DrainingServer(server_config, admission, drain_seconds).run(sockets=sockets)
