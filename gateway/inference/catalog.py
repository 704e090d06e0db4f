"""The models a tenant can call, by the id clients put in ``model``: the served base models, plus the
tenant's own fine-tuned adapters (``ft:...``) from the adapter registry. Another tenant's adapter is as
absent as a missing one."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from adapters.registry import AdapterRecord, AdapterRegistry
from engine.protocol import AdapterRef, Engine
from gateway.errors import ModelNotFound, PermissionDenied


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: Engine
    created: int
    owned_by: str = "llmaas"
    adapter: AdapterRef | None = None
    base_id: str | None = None
    """The base model a fine-tuned model runs on."""

    @property
    def base(self) -> str:
        """The base model's id: what metrics may name (never a tenant's ``ft:`` id)."""
        return self.base_id or self.id

    def card(self) -> dict[str, object]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


class ModelCatalog:
    def __init__(self, base_models: list[ServedModel], registry: AdapterRegistry) -> None:
        self._base = {model.id: model for model in base_models}
        self._registry = registry

    def base_ids(self) -> list[str]:
        return list(self._base)

    def engines(self) -> dict[str, dict[str, str]]:
        """How each base model's engine runs (dtype, hardware)."""
        return {model_id: model.engine.info for model_id, model in self._base.items()}

    async def check_health(self) -> None:
        for model in self._base.values():
            await model.engine.check_health()

    def _fine_tuned(self, record: AdapterRecord) -> ServedModel | None:
        base = self._base.get(record.base_model)
        if base is None:
            return None
        created = int(record.created_at.timestamp())
        return ServedModel(
            record.name, base.engine, created, owned_by=record.tenant_id, adapter=record.ref, base_id=base.id
        )

    async def resolve(self, model_id: str, tenant_id: str) -> ServedModel:
        if model_id in self._base:
            return self._base[model_id]
        if model_id.startswith("ft:"):
            record = await run_in_threadpool(self._registry.get, model_id, tenant_id)
            served = self._fine_tuned(record) if record else None
            if served is not None:
                return served
        raise ModelNotFound(model_id)

    async def for_tenant(self, tenant_id: str) -> list[ServedModel]:
        records = await run_in_threadpool(self._registry.for_tenant, tenant_id)
        tuned = [m for m in (self._fine_tuned(r) for r in records) if m is not None]
        return [*self._base.values(), *tuned]

    async def delete(self, model_id: str, tenant_id: str) -> None:
        """Delete a fine-tuned model (and its checkpoints), unloading them from the engine."""
        if model_id in self._base:
            raise PermissionDenied(f"The base model '{model_id}' cannot be deleted.", param="model")
        served = await self.resolve(model_id, tenant_id)
        for record in await run_in_threadpool(self._registry.delete, model_id, tenant_id):
            await served.engine.remove_adapter(record.ref)
