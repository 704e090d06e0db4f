"""Billing of fine-tuning jobs.

``charge_job`` runs inside the transaction that moves a job to its final status (the worker's, or the API's
when a job is cancelled before it runs): the ledger gets one ``fine_tune`` record for the tokens trained (its
``request_id`` is the job id, so it cannot be written twice), priced by ``pricing`` as its reservation was, and
the job is marked settled. Nothing the worker does later can charge it again or resurrect it.

``TrainingBilling`` then releases the job's budget reservation in the limiter (exactly one gateway does it, by
a compare-and-set on the job row, ``adapters.leases``), replacing it by the charge. It also charges any final
job that a worker of an older version left unsettled."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.jobs import FINAL
from adapters.leases import compare_and_set
from adapters.store import FineTuningJob
from gateway.accounting.limits import BudgetDemand, Demand, Limiter, Settlement
from gateway.accounting.pricing import PriceBook
from gateway.accounting.records import UsageEntry, insert_usage
from gateway.clock import utcnow
from gateway.db import Database, Tenant, UsageRecord
from gateway.tenancy.models import Quotas, usd_to_nanos
from gateway.tenancy.service import quotas_of

logger = logging.getLogger(__name__)


def job_charger(prices: PriceBook) -> Callable[[Session, FineTuningJob], None]:
    """The job service's ``on_final`` hook: ``charge_job`` at these prices."""
    return functools.partial(charge_job, prices)


def charge_job(prices: PriceBook, session: Session, job: FineTuningJob) -> None:
    """Charge a job that is entering its final status, in the caller's transaction."""
    tenant = session.get(Tenant, job.tenant_id)
    quotas = quotas_of(tenant) if tenant is not None else Quotas()
    trained = int(job.trained_tokens or 0)
    price = prices.price_for(quotas.prices, job.model, "training")
    entry = UsageEntry(
        request_id=job.id,
        tenant_id=job.tenant_id,
        key_id=None,
        model=job.model,
        kind="fine_tune",
        outcome=job.status,
        prompt_tokens=trained,
        completion_tokens=0,
        cost_nanos=price.cost_nanos(trained, 0),
        created_at=utcnow(),
    )
    insert_usage(session, [entry])
    job.settled_at = entry.created_at


class TrainingBilling:
    def __init__(self, database: Database, limiter: Limiter, prices: PriceBook, interval: float = 2.0) -> None:
        self._db = database
        self._limiter = limiter
        self._prices = prices
        self._interval = interval

    def _charge_unsettled(self) -> None:
        with self._db.session() as session:
            jobs = session.scalars(
                select(FineTuningJob)
                .where(FineTuningJob.status.in_(FINAL), FineTuningJob.settled_at.is_(None))
                .with_for_update(skip_locked=True)
                .limit(50)
            ).all()
            for job in jobs:
                charge_job(self._prices, session, job)

    def _candidates(self) -> list[str]:
        with self._db.session() as session:
            return list(
                session.scalars(
                    select(FineTuningJob.id)
                    .where(FineTuningJob.settled_at.is_not(None), FineTuningJob.budget_released_at.is_(None))
                    .limit(50)
                )
            )

    def _claim(self, job_id: str) -> tuple[FineTuningJob, UsageRecord | None] | None:
        """The job and its charge, if this gateway is the one to release it (compare-and-set); else None."""
        with self._db.session() as session:
            unreleased = (FineTuningJob.id == job_id, FineTuningJob.budget_released_at.is_(None))
            if not compare_and_set(session, FineTuningJob, unreleased, {"budget_released_at": utcnow()}):
                return None  # another gateway took it
            job = session.get(FineTuningJob, job_id)
            charge = session.scalar(select(UsageRecord).where(UsageRecord.request_id == job_id))
            session.expunge_all()
        return (job, charge) if job is not None else None

    def _unclaim(self, job_id: str) -> None:
        with self._db.session() as session:
            compare_and_set(session, FineTuningJob, (FineTuningJob.id == job_id,), {"budget_released_at": None})

    async def _release(self, job: FineTuningJob, charge: UsageRecord | None) -> None:
        demand = Demand(
            job.id, budget=BudgetDemand(job.estimated_tokens, job.reserved_cost_nanos, job.created_at.strftime("%Y-%m"))
        )
        used = Settlement(0, 0)
        if charge is not None:
            tokens = charge.prompt_tokens + charge.completion_tokens
            used = Settlement(tokens, usd_to_nanos(charge.cost), charge.created_at.strftime("%Y-%m"))
        await self._limiter.settle(job.tenant_id, demand, used)

    async def run_once(self) -> int:
        """Charge what an older worker left unsettled, then release charged jobs' reservations, one at a time:
        a job whose release fails is given back to the next pass."""
        await run_in_threadpool(self._charge_unsettled)
        released = 0
        for job_id in await run_in_threadpool(self._candidates):
            claimed = await run_in_threadpool(self._claim, job_id)
            if claimed is None:
                continue
            try:
                await asyncio.shield(self._release(*claimed))
            except Exception:
                logger.exception("releasing the reservation of %s failed; it is tried again", job_id)
                await run_in_threadpool(self._unclaim, job_id)
                continue
            released += 1
        return released

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:
                logger.exception("releasing fine-tuning reservations failed; retrying")
