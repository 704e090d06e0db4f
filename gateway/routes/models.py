"""``GET /v1/models``, ``GET /v1/models/{model}`` and ``DELETE /v1/models/{model}`` (fine-tuned models)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import CatalogDep
from gateway.quota import QuotaDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(catalog: CatalogDep, quota: QuotaDep) -> dict[str, Any]:
    allowed = quota.principal.identity.allowed_models
    models = await catalog.for_tenant(quota.principal.tenant_id)
    return {"object": "list", "data": [m.card() for m in models if allowed is None or m.id in allowed]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, catalog: CatalogDep, quota: QuotaDep) -> dict[str, Any]:
    quota.principal.check_model(model)
    return (await catalog.resolve(model, quota.principal.tenant_id)).card()


@router.delete("/v1/models/{model:path}")
async def delete_model(model: str, catalog: CatalogDep, quota: QuotaDep) -> dict[str, Any]:
    quota.principal.check_model(model)
    await catalog.delete(model, quota.principal.tenant_id)
    return {"id": model, "object": "model", "deleted": True}
