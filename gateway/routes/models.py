"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import CatalogDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(catalog: CatalogDep) -> dict[str, Any]:
    return {"object": "list", "data": [model.card() for model in catalog.all()]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, catalog: CatalogDep) -> dict[str, Any]:
    return catalog.get(model).card()
