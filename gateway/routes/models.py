"""``GET /v1/models``, ``GET /v1/models/{model}`` and ``DELETE /v1/models/{model}`` (fine-tuned models)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.orm import Session

from adapters.registry import AdapterRecord
from gateway import audit, bounds
from gateway.edge.strict_json import StrictJSONRoute
from gateway.inference.schemas import ModelDeleted, ModelList, ModelOut
from gateway.state import ActorDep, CatalogDep, RateLimitHeaders, TenantDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

ModelPath = Annotated[str, Path(max_length=bounds.MODEL)]


@router.get("/v1/models")
async def list_models(catalog: CatalogDep, tenant: TenantDep) -> ModelList:
    allowed = tenant.identity.allowed_models
    models = await catalog.for_tenant(tenant.tenant_id)
    return ModelList(data=[m.card() for m in models if allowed is None or m.id in allowed])


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: ModelPath, catalog: CatalogDep, tenant: TenantDep) -> ModelOut:
    tenant.check_model(model)
    return await catalog.card(model, tenant.tenant_id)


@router.delete("/v1/models/{model:path}")
async def delete_model(model: ModelPath, catalog: CatalogDep, tenant: TenantDep, actor: ActorDep) -> ModelDeleted:
    tenant.check_model(model)

    def audited(session: Session, deleted: list[AdapterRecord]) -> None:
        names = [record.name for record in deleted]
        audit.record(session, actor, "model.delete", "model", model, tenant.tenant_id, {"deleted": names})

    await catalog.delete(model, tenant.tenant_id, audited)
    return ModelDeleted(id=model)
