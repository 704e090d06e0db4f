"""Releasing fine-tuning jobs' budget reservations, on both databases: each job once, and a release the limiter
failed is tried again instead of being lost."""

from __future__ import annotations

from adapters.jobs import JobService
from adapters.store import FineTuningJob
from gateway.accounting.limits import Demand, MemoryLimiter, Settlement
from gateway.accounting.pricing import PriceBook
from gateway.accounting.training_billing import TrainingBilling
from gateway.db import Database
from tests.test_worker import charge_job, job_request


class FlakyLimiter(MemoryLimiter):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.settled: list[tuple[str, Settlement]] = []

    async def settle(self, tenant_id: str, demand: Demand, used: Settlement) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        self.settled.append((demand.id, used))
        await super().settle(tenant_id, demand, used)


def released_at(database: Database, job_id: str) -> object:
    with database.sessions() as session:
        return session.get(FineTuningJob, job_id).budget_released_at  # type: ignore[union-attr]


async def test_a_release_the_limiter_failed_is_tried_again_and_done_once(database: Database) -> None:
    jobs = JobService(database.sessions, on_final=charge_job)
    job_id = jobs.create(job_request(estimated_tokens=500)).id
    jobs.cancel("ten_1", job_id)  # final: charged in that transaction
    limiter = FlakyLimiter(failures=1)
    billing = TrainingBilling(database, limiter, PriceBook({}))
    assert await billing.run_once() == 0
    assert released_at(database, job_id) is None  # given back for the next pass
    assert await billing.run_once() == 1
    assert released_at(database, job_id) is not None
    assert await billing.run_once() == 0
    assert [job for job, _ in limiter.settled] == [job_id]


async def test_a_running_job_is_not_released(database: Database) -> None:
    jobs = JobService(database.sessions, on_final=charge_job)
    jobs.create(job_request())
    assert await TrainingBilling(database, MemoryLimiter(), PriceBook({})).run_once() == 0


async def test_a_final_job_an_older_worker_left_unsettled_is_charged_then_released(database: Database) -> None:
    jobs = JobService(database.sessions, on_final=charge_job)
    job_id = jobs.create(job_request()).id
    with database.sessions.begin() as session:  # final without the hook, as a worker of an older version left it
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        job.status, job.trained_tokens = "failed", 7
    limiter = FlakyLimiter(failures=0)
    assert await TrainingBilling(database, limiter, PriceBook({})).run_once() == 1
    assert [(job, used.tokens) for job, used in limiter.settled] == [(job_id, 7)]
