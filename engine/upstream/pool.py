"""The replicas behind the gateway: kept in step with discovery, checked every scrape interval (``/health``,
``/metrics``, ``/v1/models``), and offered as one engine per base model they serve (``UpstreamEngine``).
Several base models across the pool are fine: each request only goes to the replicas that serve its model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from starlette.concurrency import run_in_threadpool

from engine.protocol import AdapterRef, EngineLoad, Tokenizer
from engine.tokenizer import HFTokenizer
from engine.upstream.client import ReplicaClient, ReplicaFailed
from engine.upstream.discovery import Discovery
from engine.upstream.model_engine import UpstreamEngine
from engine.upstream.placement import AdapterPlacement
from engine.upstream.replica import Replica
from engine.upstream.routing import Router
from engine.upstream.settings import UpstreamSettings

logger = logging.getLogger(__name__)
TOKENIZER_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as ``/ready`` and ``/metrics`` show it."""

    url: str
    available: bool
    models: tuple[str, ...]
    in_flight: int
    running: int
    waiting: int
    kv_cache_usage: float
    adapters_loaded: int
    adapter_loads: int


class UpstreamPool:
    def __init__(self, settings: UpstreamSettings, adapter_location: Callable[[AdapterRef], str]) -> None:
        self.settings = settings
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        self._discovery = Discovery(settings.urls, settings.file, api_key)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=settings.connect_timeout_seconds, sock_read=settings.read_timeout_seconds
            ),
        )
        self.client = ReplicaClient(self._session, settings.fallback_max_model_len)
        self.router = Router(settings.routing)
        self.placement = AdapterPlacement(self.client, adapter_location, settings.max_adapters_per_replica)
        self.replicas: dict[str, Replica] = {}
        self._engines: dict[str, UpstreamEngine] = {}
        self._tokenizer_failed: dict[str, float] = {}
        self._loop: asyncio.Task[None] | None = None

    async def start(self, wait_seconds: float = 30.0) -> None:
        """Check the replicas once (waiting up to ``wait_seconds`` for one to answer), then keep checking."""
        deadline = time.monotonic() + wait_seconds
        await self.refresh()
        while not self._engines and time.monotonic() < deadline:
            await asyncio.sleep(self.settings.scrape_interval_seconds)
            await self.refresh()
        if not self._engines:
            logger.error("no upstream replica answered within %.0f s; serving 503 until one does", wait_seconds)
        self._loop = asyncio.create_task(self._keep_refreshing())

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self._session.close()

    def engines(self) -> dict[str, UpstreamEngine]:
        """One engine per base model some replica has served (requests fail over among those serving it now)."""
        return dict(self._engines)

    def serving(self, model: str) -> list[Replica]:
        now = time.monotonic()
        return [r for r in self.replicas.values() if r.available(now) and r.serves(model)]

    def all_replicas(self) -> list[Replica]:
        return list(self.replicas.values())

    async def _keep_refreshing(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scrape_interval_seconds)
            try:
                await self.refresh()
            except Exception:  # a bad round must not end the checks
                logger.exception("checking the upstream replicas failed")

    async def refresh(self) -> None:
        specs = {spec.url: spec for spec in self._discovery.current()}
        for url in list(self.replicas):
            if url not in specs:
                logger.info("upstream %s left the pool", url)
                del self.replicas[url]
        for url, spec in specs.items():
            replica = self.replicas.get(url)
            if replica is None or replica.spec != spec:
                self.replicas[url] = Replica(spec)
        await asyncio.gather(*(self._check(replica) for replica in self.replicas.values()))
        for replica in self.replicas.values():
            for card in replica.models.values():
                if card.id not in self._engines:
                    await self._add_model(card.id, card.root)

    async def _check(self, replica: Replica) -> None:
        timeout = self.settings.connect_timeout_seconds + self.settings.scrape_interval_seconds
        was_available = replica.available()
        try:
            signals, models, loaded = await asyncio.wait_for(self.client.scrape(replica), timeout)
        except (ReplicaFailed, ValueError, KeyError, TypeError, TimeoutError) as exc:
            if was_available or replica.healthy:
                logger.warning("upstream %s failed its check: %s", replica.url, exc)
            replica.mark_down()
            return
        replica.refresh(signals, models, loaded)
        if not was_available and replica.available():
            logger.info("upstream %s is available: %s", replica.url, ", ".join(models) or "no models")

    async def _add_model(self, model: str, root: str) -> None:
        failed_at = self._tokenizer_failed.get(model)
        if failed_at is not None and time.monotonic() - failed_at < TOKENIZER_RETRY_SECONDS:
            return
        source = self.settings.tokenizers.get(model, root)
        try:
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
        self._engines[model] = UpstreamEngine(model, tokenizer, self)
        logger.info("serving model %s through the upstream pool", model)

    def load(self) -> EngineLoad:
        replicas = [r for r in self.replicas.values() if r.available()]
        return EngineLoad(
            running=sum(r.signals.running for r in replicas),
            waiting=sum(r.signals.waiting for r in replicas),
            kv_cache_usage=max((r.signals.kv_cache_usage for r in replicas), default=0.0),
        )

    def unfinished_requests(self) -> int:
        return sum(r.in_flight for r in self.replicas.values())

    def status(self) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(
                url=r.url,
                available=r.available(),
                models=tuple(r.models),
                in_flight=r.in_flight,
                running=r.signals.running,
                waiting=r.signals.waiting,
                kv_cache_usage=r.signals.kv_cache_usage,
                adapters_loaded=len(r.adapters),
                adapter_loads=r.adapter_loads,
            )
            for r in self.replicas.values()
        ]
