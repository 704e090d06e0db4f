"""The upstream backend: the replicas behind the gateway, kept in step with discovery, checked every scrape
interval (``/health``, ``/metrics``, ``/v1/models``), and offered as one engine per base model they serve
(``UpstreamEngine``; ``UpstreamEmbedder`` for an embedding model). Several base models across the pool are fine:
each request only goes to the replicas that serve its model. Its engines reach the replicas through its small
public API: ``ranked``, ``attempt``, ``embed``, ``note_failure``, ``context_length`` and ``remove_adapter``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from starlette.concurrency import run_in_threadpool

from engine.backend import BackendStatus, EngineLoad, ModelOffer, ReplicaStatus
from engine.protocol import AdapterRef, EngineTimeout, EngineUnavailable, Tokenizer
from engine.text_encoder import HFTextEncoder
from engine.tokenizer import HFTokenizer
from engine.upstream.client import ModelMissing, ReplicaClient, ReplicaFailed
from engine.upstream.discovery import Discovery
from engine.upstream.embedder import UpstreamEmbedder
from engine.upstream.model_engine import PAST_DEADLINE, UpstreamEngine
from engine.upstream.placement import AdapterPlacement
from engine.upstream.prefix_index import PrefixIndex
from engine.upstream.replica import ModelCard, Replica
from engine.upstream.routing import Router
from engine.upstream.settings import UpstreamSettings

logger = logging.getLogger(__name__)
TOKENIZER_RETRY_SECONDS = 60.0


class UpstreamPool:
    def __init__(self, settings: UpstreamSettings, adapter_location: Callable[[AdapterRef], str]) -> None:
        self._settings = settings
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._discovery = Discovery(settings.urls, settings.file, api_key)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=settings.connect_timeout_seconds, sock_read=settings.read_timeout_seconds
            ),
        )
        self._client = ReplicaClient(self._session, settings.fallback_max_model_len)
        self._placement = AdapterPlacement(self._client, adapter_location, settings.max_adapters_per_replica)
        self._router = Router(
            settings.routing,
            PrefixIndex(settings.prefix_block_size, settings.prefix_max_blocks, settings.prefix_ttl_seconds),
        )
        self._replicas: dict[str, Replica] = {}
        self._models: dict[str, ModelOffer] = {}
        self._tokenizer_failed: dict[str, float] = {}
        self._loop: asyncio.Task[None] | None = None

    async def start(self, wait_seconds: float = 30.0) -> None:
        """Check the replicas once (waiting up to ``wait_seconds`` for one to answer), then keep checking."""
        deadline = time.monotonic() + wait_seconds
        await self.refresh()
        while not self._models and time.monotonic() < deadline:
            await asyncio.sleep(self._settings.scrape_interval_seconds)
            await self.refresh()
        if not self._models:
            logger.error("no upstream replica answered within %.0f s; serving 503 until one does", wait_seconds)
        self._loop = asyncio.create_task(self._keep_refreshing())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self._session.close()

    def models(self) -> Mapping[str, ModelOffer]:
        """One engine per base model some replica has served (requests fail over among those serving it now)."""
        return dict(self._models)

    def _serving(self, model: str) -> list[Replica]:
        now = time.monotonic()
        return [r for r in self._replicas.values() if r.available(now) and r.serves(model)]

    def ranked(
        self,
        model: str,
        adapter: AdapterRef | None,
        exclude: set[str],
        prompt: Sequence[int] = (),
        salt: str | None = None,
    ) -> list[Replica]:
        """The available replicas that serve ``model``, but those in ``exclude`` (by URL), best first for a
        request with ``prompt`` (its token ids, cached under ``salt``)."""
        candidates = [r for r in self._serving(model) if r.url not in exclude]
        return self._router.rank(candidates, adapter.name if adapter else None, prompt, salt)

    def context_length(self, model: str) -> int | None:
        """The shortest context among the replicas that serve ``model``; None while none does."""
        return min((r.models[model].max_model_len for r in self._replicas.values() if r.serves(model)), default=None)

    @asynccontextmanager
    async def attempt(
        self, replica: Replica, body: dict[str, Any], adapter: AdapterRef | None, deadline: float
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """One try of a request on ``replica`` (counted in flight there): its adapter loaded there first, then the
        chunks of its streamed completion. Raises ``ReplicaFailed`` where another replica may do better."""
        replica.in_flight += 1
        if adapter is not None:
            replica.in_flight_by_adapter[adapter.name] += 1
        self._router.sent(replica, body["prompt"], adapter.name if adapter else None, body.get("cache_salt"))
        try:
            if adapter is not None:
                await self._placement.ensure_loaded(replica, adapter)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineTimeout(PAST_DEADLINE)
            read_timeout = min(self._settings.read_timeout_seconds, remaining)
            async with self._client.stream_completion(replica, body, read_timeout) as chunks:
                yield chunks
        finally:
            replica.in_flight -= 1
            if adapter is not None:
                replica.in_flight_by_adapter[adapter.name] -= 1

    async def embed(self, replica: Replica, body: dict[str, Any], deadline: float) -> Any:
        """One try of an embeddings request on ``replica`` (counted in flight there): its parsed answer."""
        replica.in_flight += 1
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineTimeout(PAST_DEADLINE)
            return await self._client.embed(replica, body, min(self._settings.read_timeout_seconds, remaining))
        finally:
            replica.in_flight -= 1

    def note_failure(self, replica: Replica, exc: ReplicaFailed, adapter: AdapterRef | None) -> None:
        """A try failed before any of its answer went out: eject a replica in trouble; forget an adapter it lost."""
        if isinstance(exc, ModelMissing):
            if adapter is not None:  # it restarted and lost the adapter: load it again, there or elsewhere
                replica.adapters.pop(adapter.name, None)
            return
        if exc.eject:
            logger.warning("ejecting upstream %s for %.0f s: %s", replica.url, self._settings.eject_seconds, exc)
            replica.eject(self._settings.eject_seconds)

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        """Unload a deleted adapter from every replica."""
        await self._placement.remove_everywhere(list(self._replicas.values()), adapter)

    async def _keep_refreshing(self) -> None:
        while True:
            await asyncio.sleep(self._settings.scrape_interval_seconds)
            try:
                await self.refresh()
            except Exception:  # a bad round must not end the checks
                logger.exception("checking the upstream replicas failed")

    async def refresh(self) -> None:
        specs = {spec.url: spec for spec in self._discovery.current()}
        for url in list(self._replicas):
            if url not in specs:
                logger.info("upstream %s left the pool", url)
                del self._replicas[url]
        for url, spec in specs.items():
            replica = self._replicas.get(url)
            if replica is None or replica.spec != spec:
                self._replicas[url] = Replica(spec)
        await asyncio.gather(*(self._check(replica) for replica in self._replicas.values()))
        for replica in self._replicas.values():
            for card in replica.models.values():
                if card.id not in self._models:
                    await self._add_model(replica, card)

    async def _check(self, replica: Replica) -> None:
        timeout = self._settings.connect_timeout_seconds + self._settings.scrape_interval_seconds
        was_available = replica.available()
        try:
            signals, models, loaded = await asyncio.wait_for(self._client.scrape(replica), timeout)
        except (ReplicaFailed, ValueError, KeyError, TypeError, TimeoutError) as exc:
            if was_available or replica.healthy:
                logger.warning("upstream %s failed its check: %s", replica.url, exc)
            replica.mark_down()
            return
        replica.refresh(signals, models, loaded)
        if not was_available and replica.available():
            logger.info("upstream %s is available: %s", replica.url, ", ".join(models) or "no models")

    async def _add_model(self, replica: Replica, card: ModelCard) -> None:
        model = card.id
        failed_at = self._tokenizer_failed.get(model)
        if failed_at is not None and time.monotonic() - failed_at < TOKENIZER_RETRY_SECONDS:
            return
        source = self._settings.tokenizers.get(model, card.root)
        try:
            if card.embeds and not card.generates:
                encoder = await run_in_threadpool(HFTextEncoder, source)
                dimensions = await self._client.supports_dimensions(replica, model)
                self._models[model] = ModelOffer(
                    embedder=UpstreamEmbedder(model, encoder, dimensions, self, self._settings)
                )
                logger.info("serving embedding model %s through the upstream pool", model)
                return
            tokenizer: Tokenizer = await run_in_threadpool(HFTokenizer, source)
        except Exception as exc:  # no tokenizer, no exact token counts: the model is not offered
            self._tokenizer_failed[model] = time.monotonic()
            logger.error(
                "model %s: its tokenizer could not be loaded from %r (set LLMAAS_UPSTREAM_TOKENIZERS): %s",
                model,
                source,
                exc,
            )
            return
        self._models[model] = ModelOffer(engine=UpstreamEngine(model, tokenizer, self, self._settings))
        logger.info("serving model %s through the upstream pool", model)

    async def check_health(self) -> None:
        for model in self._models:
            if not self._serving(model):
                raise EngineUnavailable(f"No server for model '{model}' is available.")

    def status(self) -> BackendStatus:
        replicas = list(self._replicas.values())
        available = [r for r in replicas if r.available()]
        models = {
            model: {
                "backend": "upstream",
                "replicas": f"{len(self._serving(model))}/{sum(r.serves(model) for r in replicas)} available",
                "routing": self._settings.routing,
            }
            for model in self._models
        }
        load = EngineLoad(
            running=sum(r.signals.running for r in available),
            waiting=sum(r.signals.waiting for r in available),
            kv_cache_usage=max((r.signals.kv_cache_usage for r in available), default=0.0),
        )
        return BackendStatus(models, load, sum(r.in_flight for r in replicas), tuple(map(_replica_status, replicas)))


def _replica_status(replica: Replica) -> ReplicaStatus:
    return ReplicaStatus(
        url=replica.url,
        available=replica.available(),
        models=tuple(replica.models),
        in_flight=replica.in_flight,
        running=replica.signals.running,
        waiting=replica.signals.waiting,
        kv_cache_usage=replica.signals.kv_cache_usage,
        adapters_loaded=len(replica.adapters),
        adapter_loads=replica.adapter_loads,
    )
