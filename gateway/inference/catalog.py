"""The models a tenant can call, by the id clients put in ``model``: the base models the backend serves now (the
in-process engines, or whatever the upstream pool's replicas serve), each by what it can do (generate: chat and
completions; embed: embeddings), plus the tenant's own fine-tuned adapters (``ft:...``) from the adapter registry
whose base is served, and the tenant's aliases (``gateway.inference.aliases``), each resolved to the model it picks
for the request. Another tenant's adapter or alias is as absent as a missing one. A model asked for what it cannot
do is a 400 naming ``model``.

Names resolve in this order: a served model's name, an ``ft:`` name, then an alias (an alias cannot be created
under a served model's name; a base model served later under an alias's name wins over the alias)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.registry import AdapterRecord, AdapterRegistry
from engine.backend import Backend, Capability, ModelOffer
from engine.protocol import AdapterRef, Embedder, Engine, EngineUnavailable
from gateway.errors import InvalidRequestError, ModelNotFound, PermissionDenied
from gateway.inference.aliases import Alias, AliasBook
from gateway.inference.schemas import ModelOut


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: Engine
    created: int
    owned_by: str = "llmaas"
    adapter: AdapterRef | None = None
    base_id: str | None = None
    """The base model a fine-tuned model runs on."""
    parent: str | None = None
    """The model a fine-tuned model was trained from: its base model, or the fine-tuned model its job continued."""
    job_id: str | None = None
    """The fine-tuning job that made it."""
    alias: Alias | None = None
    """The tenant's alias the request named, if it named one (``id`` is the model the alias picked)."""

    @property
    def base(self) -> str:
        """The base model's id: what metrics may name (never a tenant's ``ft:`` id)."""
        return self.base_id or self.id

    def card(self) -> ModelOut:
        return ModelOut(
            id=self.id,
            created=self.created,
            owned_by=self.owned_by,
            root=self.base,
            parent=self.parent,
            fine_tuning_job_id=self.job_id,
        )


@dataclass(frozen=True)
class ServedEmbedder:
    """An embedding model a tenant can call."""

    id: str
    embedder: Embedder
    created: int
    owned_by: str = "llmaas"
    alias: Alias | None = None

    def card(self) -> ModelOut:
        return ModelOut(id=self.id, created=self.created, owned_by=self.owned_by, root=self.id)


class ModelCatalog:
    def __init__(self, backend: Backend, registry: AdapterRegistry, aliases: AliasBook) -> None:
        self._backend = backend
        self._registry = registry
        self._aliases = aliases
        self._first_seen: dict[str, int] = {}

    def _offers(self, capability: Capability = Capability.GENERATE) -> Mapping[str, ModelOffer]:
        """The base models served now that can do ``capability`` (read on every request: the pool's change)."""
        return {
            model_id: offer for model_id, offer in self._backend.models().items() if capability in offer.capabilities
        }

    def _created(self, model_id: str) -> int:
        return self._first_seen.setdefault(model_id, int(time.time()))

    def _base_models(self) -> dict[str, ServedModel]:
        return {
            model_id: ServedModel(model_id, offer.engine, self._created(model_id))
            for model_id, offer in self._offers().items()
            if offer.engine is not None
        }

    def _embedders(self) -> dict[str, ServedEmbedder]:
        return {
            model_id: ServedEmbedder(model_id, offer.embedder, self._created(model_id))
            for model_id, offer in self._offers(Capability.EMBED).items()
            if offer.embedder is not None
        }

    def base_ids(self) -> list[str]:
        """Every base model served now, whatever it does."""
        return list(self._backend.models())

    def reserved_names(self) -> set[str]:
        """Names an alias may not take: every base model served now or ever seen by this gateway (a base model
        whose replicas are down for a moment must not be taken over by an alias of its name)."""
        return set(self._backend.models()) | set(self._first_seen)

    def longest_context(self, default: int) -> int:
        """The longest context of the generating models (``default`` while none is served)."""
        return max((model.engine.max_model_len for model in self._base_models().values()), default=default)

    def engines(self) -> dict[str, dict[str, str]]:
        """How each base model's engine runs (dtype, hardware; or its replicas)."""
        return {model_id: dict(info) for model_id, info in self._backend.status().models.items()}

    async def check_health(self) -> None:
        if not self._backend.models():
            raise EngineUnavailable("No model is being served yet.")
        await self._backend.check_health()

    def _fine_tuned(self, record: AdapterRecord, base_models: dict[str, ServedModel]) -> ServedModel | None:
        base = base_models.get(record.base_model)
        if base is None:
            return None
        created = int(record.created_at.timestamp())
        return ServedModel(
            record.name,
            base.engine,
            created,
            owned_by=record.tenant_id,
            adapter=record.ref,
            base_id=base.id,
            parent=record.parent or base.id,
            job_id=record.job_id,
        )

    async def alias(self, model_id: str, tenant_id: str) -> Alias | None:
        """The tenant's alias ``model_id`` names (never a served model's name or an ``ft:`` name: those win)."""
        if model_id in self._backend.models() or model_id.startswith("ft:"):
            return None
        return await self._aliases.lookup(tenant_id, model_id)

    async def resolve(self, model_id: str, tenant_id: str, admit: Callable[[Alias], None] | None = None) -> ServedModel:
        """A model that generates (chat, completions): a base model, the tenant's fine-tuned one, or the one the
        tenant's alias picks for this request (``admit``: raises if the caller may not use the alias, before any
        target is resolved, so a refused key never hears of the targets)."""
        alias = await self.alias(model_id, tenant_id)
        if alias is None:
            return await self.resolve_model(model_id, tenant_id)
        if admit is not None:
            admit(alias)
        return replace(await self.resolve_model(alias.pick(), tenant_id), alias=alias)

    async def resolve_model(self, model_id: str, tenant_id: str) -> ServedModel:
        """A model that generates, by its own name (never an alias): a base model or the tenant's fine-tuned one."""
        base_models = self._base_models()
        if model_id in base_models:
            return base_models[model_id]
        if model_id in self._embedders():
            raise InvalidRequestError(
                f"The model '{model_id}' is an embedding model: it does not generate text. "
                "Call /v1/embeddings with it, or name a chat model.",
                param="model",
                code="model_not_supported",
            )
        if model_id.startswith("ft:"):
            record = await run_in_threadpool(self._registry.get, model_id, tenant_id)
            served = self._fine_tuned(record, base_models) if record else None
            if served is not None:
                return served
        raise ModelNotFound(model_id)

    async def resolve_embedder(self, model_id: str, tenant_id: str) -> ServedEmbedder:
        """An embedding model (or the one the tenant's alias picks); a model that only generates is a 400 naming
        ``model``."""
        alias = await self.alias(model_id, tenant_id)
        if alias is None:
            return await self._embedder(model_id, tenant_id)
        return replace(await self._embedder(alias.pick(), tenant_id), alias=alias)

    async def _embedder(self, model_id: str, tenant_id: str) -> ServedEmbedder:
        embedders = self._embedders()
        if model_id in embedders:
            return embedders[model_id]
        await self.resolve_model(model_id, tenant_id)  # ModelNotFound where the tenant has no such model
        raise InvalidRequestError(
            f"The model '{model_id}' does not create embeddings. Name an embedding model "
            f"({', '.join(embedders) or 'none is served now'}).",
            param="model",
            code="model_not_supported",
        )

    def embeds(self, model_id: str) -> bool:
        """Whether ``model_id`` is an embedding model served now."""
        return model_id in self._embedders()

    async def card(self, model_id: str, tenant_id: str) -> ModelOut:
        """The card of any model the tenant can call, whatever it does (an alias's with its targets)."""
        embedder = self._embedders().get(model_id)
        if embedder is not None:
            return embedder.card()
        alias = await self.alias(model_id, tenant_id)
        if alias is not None:
            return alias.card(tenant_id)
        return (await self.resolve_model(model_id, tenant_id)).card()

    async def for_tenant(self, tenant_id: str) -> list[ServedModel | ServedEmbedder]:
        records = await run_in_threadpool(self._registry.for_tenant, tenant_id)
        base_models = self._base_models()
        tuned = [m for m in (self._fine_tuned(r, base_models) for r in records) if m is not None]
        return [*base_models.values(), *self._embedders().values(), *tuned]

    async def aliases_of(self, tenant_id: str) -> list[Alias]:
        """The tenant's aliases in force (not one a served model's name shadows), by name."""
        aliases = await self._aliases.of_tenant(tenant_id)
        served = self._backend.models()
        return [aliases[name] for name in sorted(aliases) if name not in served]

    async def delete(
        self,
        model_id: str,
        tenant_id: str,
        in_transaction: Callable[[Session, list[AdapterRecord]], None] | None = None,
    ) -> None:
        """Delete a fine-tuned model (and its checkpoints): rows and weights, and unload them from every engine
        that serves their base (every replica). Works whether or not the base model is served right now."""
        if model_id in self._backend.models():
            raise PermissionDenied(f"The base model '{model_id}' cannot be deleted.", param="model")
        deleted = []
        if model_id.startswith("ft:"):
            deleted = await run_in_threadpool(self._registry.delete, model_id, tenant_id, in_transaction)
        if not deleted:
            raise ModelNotFound(model_id)
        await self.unload(deleted)

    async def unload(self, records: list[AdapterRecord]) -> None:
        """Unload deleted adapters from the engines of their base models (the upstream pool: from every replica)."""
        base_models = self._base_models()
        for record in records:
            base = base_models.get(record.base_model)
            if base is not None:
                await base.engine.remove_adapter(record.ref)
