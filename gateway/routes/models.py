"""``GET /v1/models``, ``GET /v1/models/{model}`` and ``DELETE /v1/models/{model}`` (fine-tuned models). The
tenant's aliases are listed and retrieved as models too, with their ``targets`` (our extension field); a model an
alias points at cannot be deleted (409 naming the alias)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.orm import Session

from adapters.registry import AdapterRecord
from gateway import audit, bounds
from gateway.edge.strict_json import StrictJSONRoute
from gateway.errors import InvalidRequestError
from gateway.inference.schemas import ModelDeleted, ModelList, ModelOut
from gateway.state import ActorDep, AliasesDep, CatalogDep, RateLimitHeaders, TenantDep

router = APIRouter(route_class=StrictJSONRoute, dependencies=[RateLimitHeaders])

ModelPath = Annotated[str, Path(max_length=bounds.MODEL)]


@router.get("/v1/models", response_model_exclude_none=True)
async def list_models(catalog: CatalogDep, tenant: TenantDep) -> ModelList:
    models = [m.card() for m in await catalog.for_tenant(tenant.tenant_id) if tenant.may_use(m.id)]
    aliases = await catalog.aliases_of(tenant.tenant_id)
    cards = [alias.card(tenant.tenant_id) for alias in aliases if tenant.may_use(alias.name, alias.models)]
    return ModelList(data=[*models, *cards])


@router.get("/v1/models/{model:path}", response_model_exclude_none=True)
async def retrieve_model(model: ModelPath, catalog: CatalogDep, tenant: TenantDep) -> ModelOut:
    alias = await catalog.alias(model, tenant.tenant_id)
    tenant.check_model(model, alias.models if alias else ())
    return await catalog.card(model, tenant.tenant_id)


@router.delete("/v1/models/{model:path}")
async def delete_model(
    model: ModelPath, catalog: CatalogDep, tenant: TenantDep, actor: ActorDep, aliases: AliasesDep
) -> ModelDeleted:
    tenant.check_model(model)
    if await catalog.alias(model, tenant.tenant_id) is not None:
        raise InvalidRequestError(
            f"'{model}' is an alias, not a model; delete it with DELETE /v1/aliases/{model}.",
            param="model",
            code="model_is_alias",
        )

    def audited(session: Session, deleted: list[AdapterRecord]) -> None:
        names = [record.name for record in deleted]
        aliases.refuse_aliased(session, tenant.tenant_id, names)
        audit.record(session, actor, "model.delete", "model", model, tenant.tenant_id, {"deleted": names})

    await catalog.delete(model, tenant.tenant_id, audited)
    return ModelDeleted(id=model)
