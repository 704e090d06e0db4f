"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import CatalogDep
from gateway.quota import QuotaDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(catalog: CatalogDep, quota: QuotaDep) -> dict[str, Any]:
    allowed = quota.principal.identity.allowed_models
    models = [m for m in catalog.all() if allowed is None or m.id in allowed]
    return {"object": "list", "data": [model.card() for model in models]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, catalog: CatalogDep, quota: QuotaDep) -> dict[str, Any]:
    quota.principal.check_model(model)
    return catalog.get(model).card()
