"""The batch runner: executes batches inside the gateway, beside its engine, one at a time per gateway and
``concurrency`` requests at a time, each request an ordinary request of the batch's endpoint (the route's own
checks, rendering and answer, ``answers``) admitted as the key that created the batch against the tenant's
monthly budgets only, at the batch price, in the ``batch`` priority class and ledger kind.

Any gateway claims batches from the database and heartbeats them; a batch whose runner stopped (killed,
crashed) is taken over after ``stale_after_seconds`` and resumed with the requests still pending.

What is run at most once, and billed once: every request has a ``request_id`` minted when the batch was
created; it is the id the request is admitted, run and recorded in the ledger under, and the ledger keeps one
record per id. A request's result is stored (compare-and-set on ``pending``) right after its ledger record is
durable in the journal. So after a crash a request is re-run only when its result was not stored: it was in
flight, or had ended in the instant between its record and its result. In the second case the engine ran it
twice but the ledger bills it once (the replayed journal's record and the re-run's share the id; the first
written wins), and the output file has the re-run's answer. A stored result is never run again.

A cancelled batch stops within a heartbeat: requests in flight are aborted (billed as a disconnected client's
would be, by the one rule of ``charges``) and the requests not answered go to the error file as
``batch_cancelled``. A batch past its completion window ends ``expired`` the same way (``batch_expired``). A key
revoked or a tenant suspended ends the batch ``failed``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from gateway.accounting.admission import Admission
from gateway.batches.queue import BatchQueue
from gateway.batches.states import ENDPOINT_BODIES, BatchBody, BatchStatus, RequestStatus
from gateway.claim_loop import claim_forever
from gateway.clock import utcnow
from gateway.context import RequestContext
from gateway.db import Batch, BatchRequest
from gateway.errors import APIError, ServiceUnavailable, as_api_error
from gateway.inference.catalog import ModelCatalog
from gateway.inference.runs import RequestCaps, Serving
from gateway.inference.structured import StructuredOutputs
from gateway.ops.metrics import Metrics
from gateway.scheduling.slots import Scheduler, TenantQueueFull
from gateway.tenancy.principal import Authenticator, TenantPrincipal

logger = logging.getLogger(__name__)

Answer = Callable[[Any, Serving], Awaitable[dict[str, Any]]]
"""A route's answer to one request of a batch (``batch_answer`` of ``gateway.routes.chat``, ``completions``,
``embeddings``)."""
Result = tuple[RequestStatus, dict[str, Any], tuple[int, int]]
"""A request's status, its output line's ``response`` and its (prompt, completion) tokens."""


@dataclass(frozen=True)
class ServingParts:
    """What a request of a batch is served with (as ``gateway.state.get_serving`` gives the routes)."""

    catalog: ModelCatalog
    admission: Admission
    caps: RequestCaps
    metrics: Metrics
    structured: StructuredOutputs
    scheduler: Scheduler
    tool_call_parser: str

    def serving(self, request_id: str, tenant: TenantPrincipal) -> Serving:
        context = RequestContext(id=request_id)
        parts = (self.catalog, self.admission, self.caps, self.metrics, self.structured, self.scheduler)
        return Serving(context, tenant, *parts, tool_call_parser=self.tool_call_parser)


class BatchRunner:
    def __init__(
        self,
        queue: BatchQueue,
        principals: Authenticator,
        parts: ServingParts,
        answers: Mapping[str, Answer],
        *,
        concurrency: int = 8,
        stale_after_seconds: float = 30.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self._queue = queue
        self._principals = principals
        self._parts = parts
        self._answers = answers
        self._concurrency = concurrency
        self._stale_after = stale_after_seconds
        self._heartbeat = min(3.0, stale_after_seconds / 3)
        self._poll = poll_seconds
        self.runner_id = f"{socket.gethostname()}-batches-{secrets.token_hex(4)}"

    async def run_forever(self) -> None:
        await claim_forever(
            lambda: self._queue.claim(self.runner_id, self._stale_after),
            self.execute,
            lambda: self._parts.admission.draining,
            self._poll,
            "batch runner",
        )

    async def execute(self, batch_id: str) -> None:
        batch = await run_in_threadpool(self._queue.batch, batch_id)
        if batch is None:
            return
        # Taken over while finalizing or cancelling: only the end is left to do.
        ends: dict[str, BatchStatus] = {
            BatchStatus.FINALIZING: BatchStatus.COMPLETED,
            BatchStatus.CANCELLING: BatchStatus.CANCELLED,
        }
        status = await self._run(batch) if batch.status == BatchStatus.IN_PROGRESS else ends.get(batch.status)
        if status is not None:
            await run_in_threadpool(self._queue.finish, batch_id, self.runner_id, status)

    async def _run(self, batch: Batch) -> BatchStatus:
        """Run the batch's pending requests; the status it ends with (if it is still this runner's)."""
        try:
            tenant = await self._principals.principal_of_key(batch.key_id)
        except APIError:  # the key revoked, expired or gone, or its tenant suspended
            return BatchStatus.FAILED
        rows = await run_in_threadpool(self._queue.pending, batch.id)
        work = asyncio.ensure_future(self._requests(batch, tenant, rows))
        beating = asyncio.create_task(self._beat(batch.id, work))
        try:
            expired = await work
        except asyncio.CancelledError:
            if beating.done():  # stopped by its heartbeat: cancelled, expired, or taken over
                now = await run_in_threadpool(self._queue.batch, batch.id)
                ran_out = now is not None and now.status == BatchStatus.IN_PROGRESS and now.expires_at <= utcnow()
                return BatchStatus.EXPIRED if ran_out else BatchStatus.CANCELLED
            raise
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        return BatchStatus.EXPIRED if expired else BatchStatus.COMPLETED

    async def _beat(self, batch_id: str, work: asyncio.Future[bool]) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                if not await run_in_threadpool(self._queue.heartbeat, batch_id, self.runner_id):
                    work.cancel()  # aborts the requests in flight
                    return
            except Exception:
                logger.warning("heartbeat of batch %s failed", batch_id, exc_info=True)

    async def _requests(self, batch: Batch, tenant: TenantPrincipal, rows: list[BatchRequest]) -> bool:
        """Run the rows ``concurrency`` at a time, storing each result; whether the window expired first."""
        slots = asyncio.Semaphore(self._concurrency)
        expired = False

        async def one(row: BatchRequest) -> None:
            nonlocal expired
            async with slots:
                if expired or utcnow() >= batch.expires_at:
                    expired = True
                    return
                status, response, usage = await self._request(batch, tenant, row)
                await run_in_threadpool(self._queue.record, row.id, status, response, usage)

        await asyncio.gather(*(one(row) for row in rows))
        return expired

    async def _request(self, batch: Batch, tenant: TenantPrincipal, row: BatchRequest) -> Result:
        """One request, answered as its route answers it; an error is its answer (status code and body)."""
        while True:
            serving = self._parts.serving(row.request_id, tenant)
            try:
                body: BatchBody = ENDPOINT_BODIES[batch.endpoint].model_validate(row.body)  # checked at creation
                answer = await self._answers[batch.endpoint](body, serving)
            except (ServiceUnavailable, TenantQueueFull):
                # Draining, usage cannot be made durable for now, or the engine's queue is full: the request is not
                # the problem. Wait; if this gateway is going away, the batch's heartbeat lapses and another runner
                # resumes the request.
                await asyncio.sleep(1)
                continue
            except Exception as exc:
                error = as_api_error(exc)
                response = {"status_code": error.status_code, "request_id": row.request_id, "body": error.body()}
                return RequestStatus.FAILED, response, (0, 0)
            usage = answer["usage"]
            response = {"status_code": 200, "request_id": row.request_id, "body": answer}
            # An embeddings answer's usage has no completion tokens.
            tokens = (usage["prompt_tokens"], usage.get("completion_tokens", 0))
            return RequestStatus.COMPLETED, response, tokens
