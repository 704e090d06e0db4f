"""``POST /v1/embeddings``: vectors of strings or token ids from an embedding model
(``gateway.inference.embeddings``). ``batch_answer`` answers one request of a batch the same way
(``gateway.batches``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.accounting.admission import BATCH_KIND
from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.embeddings import EmbeddingList, EmbeddingRequest, create_embeddings
from gateway.inference.runs import Serving
from gateway.state import RateLimitHeaders, ServingDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])


@router.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingList}})
async def create_embedding(body: EmbeddingRequest, serving: ServingDep) -> JSONResponse:
    # A response of our own making: FastAPI's encoder would only walk thousands of floats again.
    return JSONResponse(await create_embeddings(body, serving))


async def batch_answer(body: EmbeddingRequest, serving: Serving) -> dict[str, Any]:
    """One request of a batch: run as the route runs it, in the ``batch`` class and ledger kind."""
    return await create_embeddings(body, serving, kind=BATCH_KIND, priority_class="batch")
