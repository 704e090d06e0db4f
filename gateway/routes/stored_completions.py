"""Stored chat completions under ``/v1/chat/completions`` (OpenAI's surface): list (``model``, ``metadata[key]=value``
filters, ``after``, ``limit``, ``order``), retrieve, a completion's messages, the metadata update and deletion; and
our extension ``POST /v1/chat/completions/exports``, which writes stored completions as a fine-tuning file. Made
with ``store: true`` on ``POST /v1/chat/completions`` (``gateway.routes.chat``); kept in
``gateway.stored_completions``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError
from gateway.fine_tuning.schemas import FileOut
from gateway.inference.request_fields import ModelId
from gateway.state import CompletionsDep, FilesDep, RateLimitHeaders, TenantDep
from gateway.stored_completions.exports import export
from gateway.stored_completions.objects import (
    COMPLETION_ID_MAX,
    COMPLETION_ID_PATTERN,
    MESSAGE_ID_PATTERN,
    CompletionDeleted,
    CompletionUpdate,
    ExportRequest,
    StoredChatCompletion,
    StoredCompletionList,
    StoredMessageList,
)


class _MetadataFilterRoute(StrictJSONRoute):
    bracketed = frozenset({"metadata"})


router = APIRouter(route_class=_MetadataFilterRoute, dependencies=[RateLimitHeaders])

CompletionId = Annotated[str, Path(max_length=COMPLETION_ID_MAX, pattern=COMPLETION_ID_PATTERN)]
Order = Annotated[Literal["asc", "desc"], Query()]
Limit = Annotated[int, Query(ge=1, le=100)]


def metadata_filter(request: Request) -> dict[str, str]:
    """The ``metadata[key]=value`` query parameters (as the SDKs send a ``metadata`` dict), within OpenAI's bounds."""
    pairs = {
        name[len("metadata[") : -1]: value
        for name, value in request.query_params.multi_items()
        if name.startswith("metadata[") and name.endswith("]")
    }
    if len(pairs) > bounds.METADATA_PAIRS or any(
        not key or len(key) > bounds.METADATA_KEY or len(value) > bounds.METADATA_VALUE for key, value in pairs.items()
    ):
        raise InvalidRequestError(
            f"metadata filters: at most {bounds.METADATA_PAIRS} pairs, keys of 1 to {bounds.METADATA_KEY} characters, "
            f"values of at most {bounds.METADATA_VALUE}.",
            param="metadata",
        )
    return pairs


@router.get("/v1/chat/completions")
async def list_stored_completions(
    request: Request,
    tenant: TenantDep,
    store: CompletionsDep,
    model: Annotated[ModelId | None, Query()] = None,
    after: Annotated[str | None, Query(max_length=COMPLETION_ID_MAX, pattern=COMPLETION_ID_PATTERN)] = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> StoredCompletionList:
    metadata = metadata_filter(request)
    return await run_in_threadpool(store.list, tenant.tenant_id, model, metadata, after, limit, order)


@router.post("/v1/chat/completions/exports")
async def export_stored_completions(
    body: ExportRequest, tenant: TenantDep, store: CompletionsDep, files: FilesDep
) -> FileOut:
    """Our extension: stored completions as a ``fine-tune`` file (``type: "sft"`` with a ``filter``, or ``type:
    "dpo"`` with ``pairs`` of ``preferred`` / ``non_preferred`` completion ids of the same input)."""
    return await run_in_threadpool(export, store, files, tenant, body)


@router.get("/v1/chat/completions/{completion_id}")
async def retrieve_stored_completion(
    completion_id: CompletionId, tenant: TenantDep, store: CompletionsDep
) -> StoredChatCompletion:
    return await run_in_threadpool(store.get, tenant.tenant_id, completion_id)


@router.post("/v1/chat/completions/{completion_id}")
async def update_stored_completion(
    completion_id: CompletionId, body: CompletionUpdate, tenant: TenantDep, store: CompletionsDep
) -> StoredChatCompletion:
    return await run_in_threadpool(store.update, tenant.tenant_id, completion_id, body.metadata)


@router.delete("/v1/chat/completions/{completion_id}")
async def delete_stored_completion(
    completion_id: CompletionId, tenant: TenantDep, store: CompletionsDep
) -> CompletionDeleted:
    return await run_in_threadpool(store.delete, tenant.tenant_id, completion_id)


@router.get("/v1/chat/completions/{completion_id}/messages")
async def list_stored_messages(
    completion_id: CompletionId,
    tenant: TenantDep,
    store: CompletionsDep,
    after: Annotated[str | None, Query(max_length=COMPLETION_ID_MAX + 7, pattern=MESSAGE_ID_PATTERN)] = None,
    limit: Limit = 20,
    order: Order = "asc",
) -> StoredMessageList:
    return await run_in_threadpool(store.messages, tenant.tenant_id, completion_id, after, limit, order)
