"""``/v1/responses``: create a response (JSON, or server-sent events with ``stream``), retrieve and delete a
stored one, and list its input items. Generation goes the chat path (``gateway.responses.turns``); the stored
responses live in the database (``gateway.responses.store``)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.runs import collect
from gateway.inference.sse import EventStreamResponse
from gateway.responses.events import response_events
from gateway.responses.objects import InputItemList, ResponseDeleted, ResponseObject
from gateway.responses.requests import OBJECT_ID_PATTERN, RESPONSE_ID_MAX, ResponseCreateRequest
from gateway.responses.turns import start_turn
from gateway.state import RateLimitHeaders, ResponsesDep, ServingDep, TenantDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

ResponseId = Annotated[str, Path(max_length=RESPONSE_ID_MAX, pattern=OBJECT_ID_PATTERN)]
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ResponseObject,
        "content": {
            "text/event-stream": {
                "schema": {"type": "string", "description": '"event: response.*" / "data: {...}" events'}
            }
        },
    }
}


@router.post("/v1/responses", response_model=None, responses=_STREAMED)
async def create_response(
    body: ResponseCreateRequest, request: Request, serving: ServingDep, store: ResponsesDep
) -> JSONResponse | EventStreamResponse:
    turn = await start_turn(body, serving, store)
    remember = partial(turn.remember, store)
    if body.streamed:
        return EventStreamResponse(response_events(turn, remember), on_close=turn.run.close)
    [choice] = await collect(request, turn.run)
    output = turn.output()
    output.feed(choice.text)
    output.finish(choice.finish_reason)
    finished = turn.finished(output)
    await run_in_threadpool(remember, finished)
    return JSONResponse(finished.model_dump(mode="json"))


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: ResponseId, tenant: TenantDep, store: ResponsesDep) -> ResponseObject:
    return await run_in_threadpool(store.get, tenant.tenant_id, response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: ResponseId, tenant: TenantDep, store: ResponsesDep) -> ResponseDeleted:
    return await run_in_threadpool(store.delete, tenant.tenant_id, response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: ResponseId,
    tenant: TenantDep,
    store: ResponsesDep,
    after: Annotated[str | None, Query(max_length=RESPONSE_ID_MAX, pattern=OBJECT_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> InputItemList:
    return await run_in_threadpool(store.input_items, tenant.tenant_id, response_id, after, limit, order)
