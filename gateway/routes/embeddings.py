"""``POST /v1/embeddings``: vectors of strings or token ids from an embedding model
(``gateway.inference.embeddings``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.embeddings import EmbeddingList, EmbeddingRequest, create_embeddings
from gateway.state import RateLimitHeaders, ServingDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])


@router.post("/v1/embeddings", response_model=None, responses={200: {"model": EmbeddingList}})
async def create_embedding(body: EmbeddingRequest, request: Request, serving: ServingDep) -> JSONResponse:
    # A response of our own making: FastAPI's encoder would only walk thousands of floats again.
    return JSONResponse(await create_embeddings(body, request, serving))
