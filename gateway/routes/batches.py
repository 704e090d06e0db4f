"""``/v1/batches``: create a batch from a ``batch`` file, retrieve, list and cancel, in OpenAI's shapes
(``gateway.batches``). Creating one counts as one request of the RPM window; its file is read and checked line
by line before the batch is stored (``failed`` with the lines' errors, or ``validating`` for a batch runner)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway.batches.lines import check_model, read_lines
from gateway.batches.objects import BatchList, BatchOut
from gateway.batches.service import NewBatch
from gateway.bounds import Metadata
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError
from gateway.state import (
    AdmissionDep,
    BatchesDep,
    ContextDep,
    FilesDep,
    IdempotentDep,
    RateLimitHeaders,
    ServingDep,
    SettingsDep,
    TenantDep,
)

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

BatchId = Annotated[str, Path(max_length=40)]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: Annotated[str, Field(max_length=40)]
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: Metadata | None = None


@router.post("/v1/batches", response_model=BatchOut)
async def create_batch(
    body: BatchCreate,
    context: ContextDep,
    serving: ServingDep,
    admission: AdmissionDep,
    files: FilesDep,
    batches: BatchesDep,
    settings: SettingsDep,
    idempotent: IdempotentDep,
) -> BatchOut | Response:
    tenant = serving.tenant
    await admission.admit_request(context, tenant)

    async def create() -> BatchOut:
        if await run_in_threadpool(files.purpose_of, tenant.tenant_id, body.input_file_id) != "batch":
            raise InvalidRequestError("The input file must be uploaded with purpose 'batch'.", param="input_file_id")
        data = await run_in_threadpool(files.read, tenant.tenant_id, body.input_file_id) or b""
        quotas = tenant.identity.quotas
        max_requests = quotas.max_batch_requests or settings.default_max_batch_requests
        max_tokens = quotas.max_enqueued_batch_tokens
        caps = serving.caps
        checked = await run_in_threadpool(read_lines, data, body.endpoint, max_requests, caps.max_generated_tokens)
        await check_model(checked, body.endpoint, serving)
        new = NewBatch(
            tenant_id=tenant.tenant_id,
            key_id=tenant.key_id,
            endpoint=body.endpoint,
            input_file_id=body.input_file_id,
            metadata=body.metadata,
            max_enqueued_tokens=settings.default_max_enqueued_batch_tokens if max_tokens is None else max_tokens,
        )
        return await run_in_threadpool(batches.create, new, checked)

    return await idempotent.once(create)


@router.get("/v1/batches")
async def list_batches(
    tenant: TenantDep,
    batches: BatchesDep,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    return await run_in_threadpool(batches.list, tenant.tenant_id, after, limit)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: BatchId, tenant: TenantDep, batches: BatchesDep) -> BatchOut:
    return await run_in_threadpool(batches.get, tenant.tenant_id, batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: BatchId, tenant: TenantDep, batches: BatchesDep) -> BatchOut:
    return await run_in_threadpool(batches.cancel, tenant.tenant_id, batch_id)
