"""Charges finished fine-tuning jobs: each job's reservation (made when it was created) is replaced by its
real ``trained_tokens``, and the ledger gets one ``fine_tune`` record. Exactly one gateway settles each
job (a compare-and-set on the job row)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool

from adapters.jobs import JobService
from gateway.limits import Demand, Limiter
from gateway.metering import Meter
from gateway.tenancy.models import Quotas
from gateway.tenancy.service import TenancyService, UsageEntry, utcnow

logger = logging.getLogger(__name__)


class TrainingBilling:
    def __init__(
        self, jobs: JobService, tenancy: TenancyService, limiter: Limiter, meter: Meter, interval: float = 2.0
    ) -> None:
        self._jobs = jobs
        self._tenancy = tenancy
        self._limiter = limiter
        self._meter = meter
        self._interval = interval

    async def settle_finished(self) -> int:
        settled = 0
        for job in await run_in_threadpool(self._jobs.unsettled_finished):
            if not await run_in_threadpool(self._jobs.mark_settled, job["id"]):
                continue  # another gateway took it
            tenant_id = job["organization_id"]
            quotas = await run_in_threadpool(self._tenancy.quotas_of_tenant, tenant_id) or Quotas()
            trained = int(job["trained_tokens"] or 0)
            estimated = int(job["estimated_tokens"])
            month = datetime.fromtimestamp(job["created_at"], UTC).strftime("%Y-%m")
            demand = Demand(job["id"], estimated, quotas.cost_nanos(job["model"], estimated, 0), month)
            cost = quotas.cost_nanos(job["model"], trained, 0)
            await self._limiter.settle(tenant_id, demand, trained, cost)
            self._meter.record(
                UsageEntry(
                    request_id=job["id"],
                    tenant_id=tenant_id,
                    key_id=None,
                    model=job["model"],
                    kind="fine_tune",
                    outcome=job["status"],
                    prompt_tokens=trained,
                    completion_tokens=0,
                    cost_nanos=cost,
                    created_at=utcnow(),
                )
            )
            settled += 1
        return settled

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.settle_finished()
            except Exception:
                logger.exception("settling fine-tuning jobs failed; retrying")
