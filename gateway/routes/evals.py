"""``/v1/evals``: evals (an item schema and testing criteria), their runs (a model sampled on items, each sample
graded; or stored chat completions graded as they were answered) and the runs' output items, in OpenAI's shapes.
Runs are queued here and executed by the eval runner (``gateway.evals.runner``); creating an eval or a run counts as
one request of the RPM window, and creating a run checks its model and items first; creating an eval checks its
model graders' models (``gateway.evals.judge``)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError
from gateway.evals import schemas
from gateway.evals.items import checked_items, checked_schema
from gateway.evals.judge import check_judges
from gateway.evals.models import EvalCreate, EvalUpdate, RunCreate
from gateway.evals.recipe import RunStatus
from gateway.evals.stored import stored_items
from gateway.state import (
    ActorDep,
    AdmissionDep,
    CompletionsDep,
    ContextDep,
    EvalsDep,
    FilesDep,
    IdempotentDep,
    RateLimitHeaders,
    ServingDep,
    SettingsDep,
    TenantDep,
    WorkersDep,
)

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

EvalId = Annotated[str, Path(max_length=40)]
RunId = Annotated[str, Path(max_length=40)]
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]
Cursor = Annotated[str | None, Query(max_length=40)]
OutputStatus = Literal["pass", "fail", "error"]
"""An output item's status (``ItemStatus`` but pending: a pending item is no output item yet)."""


@router.post("/v1/evals", response_model=schemas.EvalOut)
async def create_eval(
    body: EvalCreate,
    context: ContextDep,
    serving: ServingDep,
    settings: SettingsDep,
    admission: AdmissionDep,
    evals: EvalsDep,
    workers: WorkersDep,
    idempotent: IdempotentDep,
) -> schemas.EvalOut | Response:
    tenant = serving.tenant
    await admission.admit_request(context, tenant)

    async def create() -> schemas.EvalOut:
        if body.data_source_config.type == "custom":
            await checked_schema(workers, body.data_source_config.item_schema, "data_source_config.item_schema")
        await check_judges(body.testing_criteria, serving, settings.eval_grader_max_tokens)
        return await run_in_threadpool(evals.create, tenant.tenant_id, body)

    return await idempotent.once(create)


@router.get("/v1/evals")
async def list_evals(
    tenant: TenantDep, evals: EvalsDep, after: Cursor = None, limit: Limit = 20, order: Order = "asc"
) -> schemas.EvalList:
    return await run_in_threadpool(evals.list, tenant.tenant_id, after, limit, order)


@router.get("/v1/evals/{eval_id}")
async def retrieve_eval(eval_id: EvalId, tenant: TenantDep, evals: EvalsDep) -> schemas.EvalOut:
    return await run_in_threadpool(evals.get, tenant.tenant_id, eval_id)


@router.post("/v1/evals/{eval_id}")
async def update_eval(eval_id: EvalId, body: EvalUpdate, tenant: TenantDep, evals: EvalsDep) -> schemas.EvalOut:
    return await run_in_threadpool(evals.update, tenant.tenant_id, eval_id, body)


@router.delete("/v1/evals/{eval_id}")
async def delete_eval(eval_id: EvalId, tenant: TenantDep, evals: EvalsDep, actor: ActorDep) -> schemas.EvalDeleted:
    return await run_in_threadpool(evals.delete, tenant.tenant_id, eval_id, actor)


@router.post("/v1/evals/{eval_id}/runs", response_model=schemas.EvalRunOut)
async def create_run(
    eval_id: EvalId,
    body: RunCreate,
    context: ContextDep,
    serving: ServingDep,
    admission: AdmissionDep,
    evals: EvalsDep,
    files: FilesDep,
    workers: WorkersDep,
    stored: CompletionsDep,
    idempotent: IdempotentDep,
) -> schemas.EvalRunOut | Response:
    tenant = serving.tenant
    await admission.admit_request(context, tenant)

    async def create() -> schemas.EvalRunOut:
        definition = await run_in_threadpool(evals.definition, tenant.tenant_id, eval_id)
        source = body.data_source
        model = "jsonl"
        if source.type != "jsonl":
            if source.sampled:
                # 404 / 403 now, not when the run starts; an alias is drawn now, once for the whole run, and the
                # run names the concrete model (its resumes and its usage too).
                model = (await serving.model(source.model or model)).id
            elif source.model is not None:
                raise InvalidRequestError(
                    "data_source.model names the model that samples the items; without input_messages this run "
                    "samples nothing (it grades the stored completions as they were answered).",
                    param="data_source.model",
                )
        if source.source.type == "stored_completions":
            pick = partial(stored_items, stored, tenant.tenant_id, source.source, definition.stored_completions)
            items = await run_in_threadpool(pick)
        else:
            items = await checked_items(body, files, workers, tenant.tenant_id, definition.item_schema)
        return await run_in_threadpool(evals.create_run, tenant.tenant_id, tenant.key_id, eval_id, body, model, items)

    return await idempotent.once(create)


@router.get("/v1/evals/{eval_id}/runs")
async def list_runs(
    eval_id: EvalId,
    tenant: TenantDep,
    evals: EvalsDep,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: RunStatus | None = None,
) -> schemas.RunList:
    return await run_in_threadpool(evals.list_runs, tenant.tenant_id, eval_id, after, limit, order, status)


@router.get("/v1/evals/{eval_id}/runs/{run_id}")
async def retrieve_run(eval_id: EvalId, run_id: RunId, tenant: TenantDep, evals: EvalsDep) -> schemas.EvalRunOut:
    return await run_in_threadpool(evals.get_run, tenant.tenant_id, eval_id, run_id)


@router.post("/v1/evals/{eval_id}/runs/{run_id}")
@router.post("/v1/evals/{eval_id}/runs/{run_id}/cancel")
async def cancel_run(eval_id: EvalId, run_id: RunId, tenant: TenantDep, evals: EvalsDep) -> schemas.EvalRunOut:
    return await run_in_threadpool(evals.cancel_run, tenant.tenant_id, eval_id, run_id)


@router.delete("/v1/evals/{eval_id}/runs/{run_id}")
async def delete_run(
    eval_id: EvalId, run_id: RunId, tenant: TenantDep, evals: EvalsDep, actor: ActorDep
) -> schemas.RunDeleted:
    return await run_in_threadpool(evals.delete_run, tenant.tenant_id, eval_id, run_id, actor)


@router.get("/v1/evals/{eval_id}/runs/{run_id}/output_items")
async def list_output_items(
    eval_id: EvalId,
    run_id: RunId,
    tenant: TenantDep,
    evals: EvalsDep,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: OutputStatus | None = None,
) -> schemas.OutputItemList:
    return await run_in_threadpool(evals.output_items, tenant.tenant_id, eval_id, run_id, after, limit, order, status)


@router.get("/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
async def retrieve_output_item(
    eval_id: EvalId,
    run_id: RunId,
    output_item_id: Annotated[str, Path(max_length=40)],
    tenant: TenantDep,
    evals: EvalsDep,
) -> schemas.OutputItemOut:
    return await run_in_threadpool(evals.output_item, tenant.tenant_id, eval_id, run_id, output_item_id)
