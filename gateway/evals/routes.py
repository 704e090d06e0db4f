"""``/v1/evals``: evals (an item schema and testing criteria), their runs (a model sampled on items, each sample
graded) and the runs' output items, in OpenAI's shapes. Runs are queued here and executed by the eval runner
(``gateway.evals.runner``); creating an eval or a run counts as one request of the RPM window, and creating a
run checks its model and items first."""

from __future__ import annotations

from typing import Annotated, Any, BinaryIO, Literal

import pydantic_core
from fastapi import APIRouter, Path, Query
from jsonschema import Draft202012Validator
from starlette.concurrency import run_in_threadpool

from gateway.accounting.routes import RateLimitHeaders
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.models import EvalCreate, EvalUpdate, RunCreate
from gateway.fine_tuning.files import FileStore
from gateway.state import AdmissionDep, ContextDep, EvalsDep, FilesDep, ServingDep
from gateway.tenancy.principal import TenantDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

MAX_ITEMS = 10_000
MAX_LINE_BYTES = 1024 * 1024
EvalId = Annotated[str, Path(max_length=40)]
RunId = Annotated[str, Path(max_length=40)]
Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[Literal["asc", "desc"], Query()]
Cursor = Annotated[str | None, Query(max_length=40)]
Items = list[tuple[dict[str, Any], dict[str, Any] | None]]


@router.post("/v1/evals")
async def create_eval(
    body: EvalCreate, context: ContextDep, tenant: TenantDep, admission: AdmissionDep, evals: EvalsDep
) -> dict[str, Any]:
    await admission.admit_request(context, tenant)
    return await run_in_threadpool(evals.create, tenant.tenant_id, body)


@router.get("/v1/evals")
async def list_evals(
    tenant: TenantDep, evals: EvalsDep, after: Cursor = None, limit: Limit = 20, order: Order = "asc"
) -> dict[str, Any]:
    return await run_in_threadpool(evals.list, tenant.tenant_id, after, limit, order)


@router.get("/v1/evals/{eval_id}")
async def retrieve_eval(eval_id: EvalId, tenant: TenantDep, evals: EvalsDep) -> dict[str, Any]:
    return await run_in_threadpool(evals.get, tenant.tenant_id, eval_id)


@router.post("/v1/evals/{eval_id}")
async def update_eval(eval_id: EvalId, body: EvalUpdate, tenant: TenantDep, evals: EvalsDep) -> dict[str, Any]:
    return await run_in_threadpool(evals.update, tenant.tenant_id, eval_id, body)


@router.delete("/v1/evals/{eval_id}")
async def delete_eval(eval_id: EvalId, tenant: TenantDep, evals: EvalsDep) -> dict[str, Any]:
    return await run_in_threadpool(evals.delete, tenant.tenant_id, eval_id)


@router.post("/v1/evals/{eval_id}/runs")
async def create_run(
    eval_id: EvalId,
    body: RunCreate,
    context: ContextDep,
    serving: ServingDep,
    admission: AdmissionDep,
    evals: EvalsDep,
    files: FilesDep,
) -> dict[str, Any]:
    tenant = serving.tenant
    await admission.admit_request(context, tenant)
    definition = await run_in_threadpool(evals.definition, tenant.tenant_id, eval_id)
    source = body.data_source
    model = source.model if source.type == "completions" else "jsonl"
    if source.type == "completions":
        await serving.model(source.model)  # 404 / 403 now, not when the run starts
    items = await run_in_threadpool(_items, body, files, tenant.tenant_id, definition.item_schema)
    return await run_in_threadpool(evals.create_run, tenant.tenant_id, tenant.key_id, eval_id, body, model, items)


@router.get("/v1/evals/{eval_id}/runs")
async def list_runs(
    eval_id: EvalId,
    tenant: TenantDep,
    evals: EvalsDep,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = None,
) -> dict[str, Any]:
    return await run_in_threadpool(evals.list_runs, tenant.tenant_id, eval_id, after, limit, order, status)


@router.get("/v1/evals/{eval_id}/runs/{run_id}")
async def retrieve_run(eval_id: EvalId, run_id: RunId, tenant: TenantDep, evals: EvalsDep) -> dict[str, Any]:
    return await run_in_threadpool(evals.get_run, tenant.tenant_id, eval_id, run_id)


@router.post("/v1/evals/{eval_id}/runs/{run_id}")
@router.post("/v1/evals/{eval_id}/runs/{run_id}/cancel")
async def cancel_run(eval_id: EvalId, run_id: RunId, tenant: TenantDep, evals: EvalsDep) -> dict[str, Any]:
    return await run_in_threadpool(evals.cancel_run, tenant.tenant_id, eval_id, run_id)


@router.delete("/v1/evals/{eval_id}/runs/{run_id}")
async def delete_run(eval_id: EvalId, run_id: RunId, tenant: TenantDep, evals: EvalsDep) -> dict[str, Any]:
    return await run_in_threadpool(evals.delete_run, tenant.tenant_id, eval_id, run_id)


@router.get("/v1/evals/{eval_id}/runs/{run_id}/output_items")
async def list_output_items(
    eval_id: EvalId,
    run_id: RunId,
    tenant: TenantDep,
    evals: EvalsDep,
    after: Cursor = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Literal["pass", "fail", "error"] | None = None,
) -> dict[str, Any]:
    return await run_in_threadpool(evals.output_items, tenant.tenant_id, eval_id, run_id, after, limit, order, status)


@router.get("/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
async def retrieve_output_item(
    eval_id: EvalId,
    run_id: RunId,
    output_item_id: Annotated[str, Path(max_length=40)],
    tenant: TenantDep,
    evals: EvalsDep,
) -> dict[str, Any]:
    return await run_in_threadpool(evals.output_item, tenant.tenant_id, eval_id, run_id, output_item_id)


# -- a run's items ----------------------------------------------------------------------------------------------------


def _items(body: RunCreate, files: FileStore, tenant_id: str, item_schema: dict[str, Any]) -> Items:
    """The run's items (and samples), read from the request or the tenant's file and checked against the eval's
    item schema; blocking, for a worker thread."""
    source = body.data_source.source
    if source.type == "file_content":
        items: Items = [(entry.item, entry.sample) for entry in source.content]
    else:
        try:
            handle, _ = files.open(tenant_id, source.id)
        except NotFoundError as exc:
            raise InvalidRequestError(f"File '{source.id}' not found.", param="data_source.source.id") from exc
        with handle:
            items = _read_items(handle)
    if len(items) > MAX_ITEMS:
        raise InvalidRequestError(f"A run takes at most {MAX_ITEMS} items.", param="data_source.source")
    validator = Draft202012Validator(item_schema)
    for index, (item, sample) in enumerate(items):
        problem = next(iter(validator.iter_errors(item)), None)
        if problem is not None:
            raise InvalidRequestError(
                f"Item {index} does not match the eval's item schema: {problem.message[:300]}",
                param="data_source.source",
            )
        if body.data_source.type == "jsonl" and not isinstance((sample or {}).get("output_text"), str):
            raise InvalidRequestError(
                f"Item {index} has no sample.output_text to grade (a jsonl run grades given samples).",
                param="data_source.source",
            )
    return items


def _read_items(handle: BinaryIO) -> Items:
    """Lines of ``{"item": {...}, "sample": {...}}`` (the sample optional), one item in memory at a time."""
    items: Items = []
    number = 0
    while line := handle.readline(MAX_LINE_BYTES + 1):
        number += 1
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES or len(items) >= MAX_ITEMS:
            raise InvalidRequestError(
                f"Line {number}: lines may be {MAX_LINE_BYTES} bytes and files {MAX_ITEMS} items at most.",
                param="data_source.source.id",
            )
        try:
            entry = pydantic_core.from_json(line, allow_inf_nan=False)  # strict: no lone surrogates, no NaN
        except ValueError:
            raise InvalidRequestError(f"Line {number} is not valid JSON.", param="data_source.source.id") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("item"), dict):
            raise InvalidRequestError(
                f'Line {number} must be an object with an "item" object.', param="data_source.source.id"
            )
        sample = entry.get("sample")
        items.append((entry["item"], sample if isinstance(sample, dict) else None))
    return items
