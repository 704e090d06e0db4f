"""``/v1/fine_tuning/jobs``: create (one request of the RPM window, validated and charged against the budget),
list, retrieve, cancel, events and checkpoints. HTTP only: creating a job is ``creation.JobCreator``'s, the rest
``adapters.jobs.JobService``'s. Training itself runs in the worker process (``llmaas worker``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from adapters.base_models import trainable_models
from adapters.job_objects import CheckpointList, EventList, FineTuningJobOut, JobList
from gateway.edge.strict_json import StrictJSONRoute
from gateway.fine_tuning.creation import JobCreator
from gateway.fine_tuning.models import FineTuningJobCreate
from gateway.state import (
    AdmissionDep,
    CatalogDep,
    ContextDep,
    EngineSettingsDep,
    FilesDep,
    IdempotentDep,
    JobsDep,
    RateLimitHeaders,
    TenantDep,
)

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])


async def get_job_creator(
    jobs: JobsDep, files: FilesDep, catalog: CatalogDep, admission: AdmissionDep, engine_settings: EngineSettingsDep
) -> JobCreator:
    return JobCreator(jobs, files, catalog, admission, trainable_models(engine_settings), engine_settings.max_lora_rank)


JobCreatorDep = Annotated[JobCreator, Depends(get_job_creator)]


@router.post("/v1/fine_tuning/jobs", response_model=FineTuningJobOut)
async def create_job(
    body: FineTuningJobCreate,
    context: ContextDep,
    tenant: TenantDep,
    admission: AdmissionDep,
    creator: JobCreatorDep,
    idempotent: IdempotentDep,
) -> FineTuningJobOut | Response:
    await admission.admit_request(context, tenant)  # one unit of the RPM window, before any file is read
    return await idempotent.once(lambda: creator.create(tenant, body))


Limit = Annotated[int, Query(ge=1, le=100)]
JobId = Annotated[str, Path(max_length=40)]
EventCursor = Annotated[str | None, Query(pattern=r"^ftevent-[0-9a-f]{24}$")]
CheckpointCursor = Annotated[str | None, Query(max_length=40)]
JobCursor = Annotated[str | None, Query(max_length=40)]


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(jobs: JobsDep, tenant: TenantDep, after: JobCursor = None, limit: Limit = 20) -> JobList:
    return await run_in_threadpool(jobs.list, tenant.tenant_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: JobId, jobs: JobsDep, tenant: TenantDep) -> FineTuningJobOut:
    return await run_in_threadpool(jobs.get, tenant.tenant_id, job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: JobId, jobs: JobsDep, tenant: TenantDep) -> FineTuningJobOut:
    return await run_in_threadpool(jobs.cancel, tenant.tenant_id, job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(
    job_id: JobId, jobs: JobsDep, tenant: TenantDep, after: EventCursor = None, limit: Limit = 20
) -> EventList:
    return await run_in_threadpool(jobs.events, tenant.tenant_id, job_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(
    job_id: JobId, jobs: JobsDep, tenant: TenantDep, after: CheckpointCursor = None, limit: Limit = 10
) -> CheckpointList:
    return await run_in_threadpool(jobs.checkpoints, tenant.tenant_id, job_id, after, limit)
