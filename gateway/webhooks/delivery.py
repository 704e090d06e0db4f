"""The delivery loop: every gateway runs one (a lifespan task). It claims due deliveries from the outbox
(``gateway.webhooks.outbox``), ``concurrency`` at a time, POSTs each signed event to its endpoint and records the
outcome. At least once: a gateway that dies between sending and recording leaves the delivery to be taken over
and sent again, with the same ``webhook-id``, which the receiver uses to drop duplicates.

Each try is bounded: the URL and its addresses are checked again (``gateway.webhooks.destinations``; the
connection goes only to a checked address), the whole request ends within ``timeout_seconds``, redirects are not
followed (a 3xx is a failed try), at most ``BODY_BYTES`` of the answer are read, and no connection is reused
between deliveries. ``test`` sends one sample event at once, the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable

import aiohttp
from starlette.concurrency import run_in_threadpool

from gateway.clock import utcnow
from gateway.errors import APIError
from gateway.webhooks.destinations import CheckedResolver, Destinations
from gateway.webhooks.events import event_body, new_event_id
from gateway.webhooks.outbox import Claimed, Outbox
from gateway.webhooks.secrets import sign
from gateway.webhooks.service import Signing

logger = logging.getLogger(__name__)

BODY_BYTES = 4096
USER_AGENT = "LLMaaS-Webhooks/1"
_SAMPLE_IDS = {"batch": "batch_test", "eval": "evalrun_test", "fine_tuning": "ftjob-test"}

Outcome = tuple[int | None, str | None]
"""A try's answer: the endpoint's status code (None: none came) and what went wrong (None: delivered)."""


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        destinations: Destinations,
        draining: Callable[[], bool],
        *,
        timeout_seconds: float,
        concurrency: int,
        lease_seconds: float,
        poll_seconds: float,
    ) -> None:
        self._outbox = outbox
        self._destinations = destinations
        self._draining = draining
        self._timeout = timeout_seconds
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._http: aiohttp.ClientSession | None = None
        self.runner_id = f"{socket.gethostname()}-webhooks-{secrets.token_hex(4)}"

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._destinations),
            use_dns_cache=False,
            force_close=True,
            limit=0,  # the loop bounds its own tries; tenants' tests (each one RPM request) must not queue them
        )
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout), trust_env=False
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def run_forever(self) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        running: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            slots.release()

        try:
            while True:
                await slots.acquire()
                claimed = await self._claim()
                if claimed is None:
                    slots.release()
                    await asyncio.sleep(self._poll)
                    continue
                task = asyncio.create_task(self._deliver(claimed))
                running.add(task)
                task.add_done_callback(done)
        finally:
            for task in list(running):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*running, return_exceptions=True)

    async def _claim(self) -> Claimed | None:
        if self._draining():  # a gateway going away takes no new work
            return None
        try:
            return await run_in_threadpool(self._outbox.claim, self.runner_id, self._lease)
        except Exception:
            logger.exception("claiming a webhook delivery failed; going on")
            return None

    async def _deliver(self, claimed: Claimed) -> None:
        outcome: Outcome
        if claimed.signing is None:
            outcome = None, "The endpoint is disabled."
        else:
            try:
                outcome = await self.send(claimed.signing, claimed.event_id, claimed.payload)
            except Exception:  # counted as a failed try, so that it cannot come back forever
                logger.exception("sending webhook delivery %s failed", claimed.delivery_id)
                outcome = None, "The delivery failed on our side."
        try:
            await run_in_threadpool(self._outbox.record, claimed, self.runner_id, *outcome)
        except Exception:  # the lease lapses and another try is made
            logger.exception("recording webhook delivery %s failed", claimed.delivery_id)

    async def test(self, signing: Signing, event_type: str) -> Outcome:
        """One sample event of ``event_type`` sent now."""
        sample = _SAMPLE_IDS[event_type.split(".", 1)[0]]
        event_id = new_event_id()
        return await self.send(signing, event_id, event_body(event_id, event_type, sample, utcnow()))

    async def send(self, signing: Signing, event_id: str, payload: str) -> Outcome:
        assert self._http is not None, "start() first"
        if not signing.secrets:
            return None, "The endpoint's signing secret cannot be read (the secrets key changed?): rotate it."
        try:
            self._destinations.check_url(signing.url)
        except APIError as exc:
            return None, exc.message
        body, timestamp = payload.encode(), int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sign(secret, event_id, timestamp, body) for secret in signing.secrets),
        }
        try:
            async with self._http.post(signing.url, data=body, headers=headers, allow_redirects=False) as response:
                await response.content.read(BODY_BYTES)  # the rest goes with the connection
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return None, f"No answer: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        return (status, None) if 200 <= status < 300 else (status, f"The endpoint answered {status}.")
