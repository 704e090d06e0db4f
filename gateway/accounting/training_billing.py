"""Billing of fine-tuning jobs.

``charge_job`` runs inside the transaction that moves a job to its final status (the worker's, or the API's
when a job is cancelled before it runs): the ledger gets one ``fine_tune`` record for the tokens trained (its
``request_id`` is the job id, so it cannot be written twice) and the job is marked settled. Nothing the
worker does later can charge it again or resurrect it.

``TrainingBilling`` then releases the job's budget reservation in the limiter (exactly one gateway does it, by
a compare-and-set on the job row), replacing it by the charge. It also charges any final job that a worker
of an older version left unsettled."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.jobs import FINAL
from adapters.store import FineTuningJob
from gateway.accounting.limits import BudgetDemand, Demand, Limiter, Settlement
from gateway.accounting.records import UsageEntry, insert_usage
from gateway.db import Database, Tenant, UsageRecord
from gateway.tenancy.models import Quotas, usd_to_nanos
from gateway.tenancy.service import quotas_of, utcnow

logger = logging.getLogger(__name__)


def charge_job(session: Session, job: FineTuningJob) -> None:
    """Charge a job that is entering its final status, in the caller's transaction."""
    tenant = session.get(Tenant, job.tenant_id)
    quotas = quotas_of(tenant) if tenant is not None else Quotas()
    trained = int(job.trained_tokens or 0)
    entry = UsageEntry(
        request_id=job.id,
        tenant_id=job.tenant_id,
        key_id=None,
        model=job.model,
        kind="fine_tune",
        outcome=job.status,
        prompt_tokens=trained,
        completion_tokens=0,
        cost_nanos=quotas.cost_nanos(job.model, trained, 0),
        created_at=utcnow(),
    )
    insert_usage(session, [entry])
    job.settled_at = entry.created_at


class TrainingBilling:
    def __init__(self, database: Database, limiter: Limiter, interval: float = 2.0) -> None:
        self._db = database
        self._limiter = limiter
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
                charge_job(session, job)

    def _claim_releases(self) -> list[tuple[FineTuningJob, UsageRecord | None]]:
        """Final, charged jobs whose reservation this gateway now releases (each claimed by compare-and-set)."""
        with self._db.session() as session:
            candidates = session.scalars(
                select(FineTuningJob.id)
                .where(FineTuningJob.settled_at.is_not(None), FineTuningJob.budget_released_at.is_(None))
                .limit(50)
            ).all()
        claimed: list[tuple[FineTuningJob, UsageRecord | None]] = []
        for job_id in candidates:
            with self._db.session() as session:
                taken = session.execute(
                    update(FineTuningJob)
                    .where(FineTuningJob.id == job_id, FineTuningJob.budget_released_at.is_(None))
                    .values(budget_released_at=utcnow())
                )
                if not taken.rowcount:
                    continue  # another gateway took it
                job = session.get(FineTuningJob, job_id)
                charge = session.scalar(select(UsageRecord).where(UsageRecord.request_id == job_id))
                session.expunge_all()
            if job is not None:
                claimed.append((job, charge))
        return claimed

    async def run_once(self) -> int:
        await run_in_threadpool(self._charge_unsettled)
        released = await run_in_threadpool(self._claim_releases)
        for job, charge in released:
            demand = Demand(
                job.id,
                budget=BudgetDemand(job.estimated_tokens, job.reserved_cost_nanos, job.created_at.strftime("%Y-%m")),
            )
            used = (
                Settlement(
                    charge.prompt_tokens + charge.completion_tokens,
                    usd_to_nanos(charge.cost),
                    charge.created_at.strftime("%Y-%m"),
                )
                if charge is not None
                else Settlement(0, 0)
            )
            await self._limiter.settle(job.tenant_id, demand, used)
        return len(released)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.run_once()
            except Exception:
                logger.exception("releasing fine-tuning reservations failed; retrying")
