"""The HTTP calls to one replica (vLLM's OpenAI server): its checks, its adapters, a streamed completion and
embeddings.
Every call raises ``ReplicaFailed`` (the replica's fault: try another) or ``RequestRejected`` (the request's).

On aiohttp rather than httpx: this is the gateway's hot path (one upstream stream per request), and aiohttp's
C parser and connection pool cost a fraction of httpx's per request (``bench/proxy_overhead.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pydantic_core

from engine.protocol import RequestRejected
from engine.upstream.replica import ModelCard, Replica
from engine.upstream.signals import ReplicaSignals, parse_metrics

ERROR_BODY_LIMIT = 4096
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class ReplicaFailed(Exception):
    """The replica could not answer (connect error, timeout, 5xx, overload): another replica may.
    ``eject``: the replica itself is in trouble (unreachable, overloaded, cut off), not just this request."""

    def __init__(self, message: str, *, eject: bool = True) -> None:
        super().__init__(message)
        self.eject = eject


class ModelMissing(ReplicaFailed):
    """The replica does not know the model or adapter (it restarted, or was never told)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, eject=False)


class AdapterLoadFailed(ReplicaFailed):
    """The replica refused to load an adapter (its files missing or unreadable there): this adapter's trouble,
    not the replica's, so it ejects nothing (a tenant's broken model must not take replicas out)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, eject=False)


def _headers(replica: Replica) -> dict[str, str]:
    return {"Authorization": f"Bearer {replica.spec.api_key}"} if replica.spec.api_key else {}


def _error_message(body: bytes) -> str:
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", errors="replace")
    try:
        error = json.loads(text)
        return str(error.get("error", {}).get("message") or error.get("message") or text)
    except (ValueError, AttributeError):
        return text


def _raise_for(status: int, body: bytes, replica: Replica) -> None:
    if status < 400:
        return
    message = _error_message(body)
    if status == 404:
        raise ModelMissing(f"{replica.url}: {message}")
    if status in (408, 429) or status >= 500:
        # Overload and unreachable-behind-a-proxy say "this replica"; another 5xx may be this request's doing:
        # retried elsewhere, but it ejects nothing (one tenant's odd request must not take replicas out; a replica
        # that is really sick fails its checks).
        raise ReplicaFailed(f"{replica.url} answered {status}: {message}", eject=status in (429, 502, 503, 504))
    raise RequestRejected(message)


class ReplicaClient:
    def __init__(self, session: aiohttp.ClientSession, fallback_max_model_len: int) -> None:
        self._session = session
        self._fallback_max_model_len = fallback_max_model_len

    async def _call(
        self,
        replica: Replica,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> bytes:
        timeout = None
        if read_timeout is not None:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self._session.timeout.sock_connect, sock_read=read_timeout
            )
        try:
            async with self._session.request(
                method, replica.url + path, json=body, headers=_headers(replica), timeout=timeout
            ) as r:
                content = await r.read()
        except TRANSPORT_ERRORS as exc:
            raise ReplicaFailed(f"{replica.url}{path}: {exc!r}") from exc
        _raise_for(r.status, content, replica)
        return content

    async def scrape(self, replica: Replica) -> tuple[ReplicaSignals, dict[str, ModelCard], list[str]]:
        """Its health, load, base models and loaded adapters (one active check). A server in front of vLLM
        (Ray Serve LLM, a production-stack router) may have no ``/health`` or ``/metrics`` and may not say a
        model's context length: its ``/v1/models`` answering is then the check, the router counts only its own
        requests on it, and ``fallback_max_model_len`` stands in (the server still refuses what is too long)."""
        await self._optional(replica, "/health")
        metrics = await self._optional(replica, "/metrics")
        listing = json.loads(await self._call(replica, "GET", "/v1/models"))
        routes: set[str] | None = None
        models: dict[str, ModelCard] = {}
        adapters: list[str] = []
        for card in listing.get("data", []):
            if card.get("parent"):
                adapters.append(str(card["id"]))
                continue
            model_id = str(card["id"])
            length = card.get("max_model_len") or (card.get("metadata") or {}).get("max_request_context_length")
            known = replica.models.get(model_id)
            if known is None and routes is None:  # a model new to us: what it does (read once)
                routes = await self._routes(replica)
            generates, embeds = (
                (known.generates, known.embeds)
                if known is not None
                else (not routes or "/v1/completions" in routes, "/v1/embeddings" in (routes or ()))
            )
            root = str(card.get("root") or model_id)
            models[model_id] = ModelCard(model_id, root, int(length or self._fallback_max_model_len), generates, embeds)
        signals = parse_metrics(metrics.decode("utf-8", errors="replace")) if metrics is not None else ReplicaSignals()
        return signals, models, adapters

    async def _routes(self, replica: Replica) -> set[str]:
        """The paths its ``/openapi.json`` lists; empty where it has none (a server in front of vLLM: taken to
        generate, as before embeddings)."""
        document = await self._optional(replica, "/openapi.json")
        paths = json.loads(document).get("paths") if document is not None else None
        return set(paths) if isinstance(paths, dict) else set()

    async def embed(self, replica: Replica, body: dict[str, Any], read_timeout: float) -> Any:
        """``POST /v1/embeddings`` (not streamed): the parsed answer."""
        return json.loads(await self._call(replica, "POST", "/v1/embeddings", body, read_timeout))

    async def supports_dimensions(self, replica: Replica, model: str) -> bool:
        """Whether the model takes ``dimensions`` (a Matryoshka model): one probe of a single token."""
        try:
            await self._call(replica, "POST", "/v1/embeddings", {"model": model, "input": [[0]], "dimensions": 1})
        except (RequestRejected, ReplicaFailed):
            return False
        return True

    async def _optional(self, replica: Replica, path: str) -> bytes | None:
        """``GET path``, or None where the server has no such route."""
        try:
            return await self._call(replica, "GET", path)
        except ModelMissing:  # a 404
            return None

    async def load_adapter(self, replica: Replica, name: str, path: str) -> None:
        try:
            await self._call(replica, "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except RequestRejected as exc:
            if "already" not in str(exc):  # loaded by another gateway meanwhile: as good as our load
                raise AdapterLoadFailed(f"{replica.url} could not load adapter {name}: {exc}") from exc

    async def unload_adapter(self, replica: Replica, name: str) -> None:
        with contextlib.suppress(RequestRejected, ModelMissing):  # not loaded there (any more): nothing to undo
            await self._call(replica, "POST", "/v1/unload_lora_adapter", {"lora_name": name})

    @asynccontextmanager
    async def stream_completion(
        self, replica: Replica, body: dict[str, Any], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The chunks of a streamed ``/v1/completions`` (``data:`` lines, parsed). Leaving the context before the
        end closes the connection, which makes vLLM abort the request."""
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._session.timeout.sock_connect, sock_read=read_timeout
        )
        try:
            response = await self._session.post(
                replica.url + "/v1/completions", json=body, headers=_headers(replica), timeout=timeout
            )
        except TRANSPORT_ERRORS as exc:
            raise ReplicaFailed(f"{replica.url}: {exc!r}") from exc
        try:
            if response.status >= 400:
                _raise_for(response.status, await response.content.read(ERROR_BODY_LIMIT), replica)
            yield _chunks(response, replica)
        finally:
            if response.content.is_eof():
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # cut short: the connection is closed, and the replica aborts the request


async def _chunks(response: aiohttp.ClientResponse, replica: Replica) -> AsyncIterator[dict[str, Any]]:
    done = False
    try:
        async for raw in response.content:  # to the end, past [DONE]: a connection read to the end is kept
            if done or not raw.startswith(b"data:"):
                continue
            data = raw[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            yield _chunk(data, replica)
    except TRANSPORT_ERRORS as exc:
        raise ReplicaFailed(f"{replica.url} broke off the stream: {exc!r}") from exc
    if not done:
        raise ReplicaFailed(f"{replica.url} ended the stream without [DONE]")


def _chunk(data: bytes, replica: Replica) -> dict[str, Any]:
    """One ``data:`` event of a completion stream, parsed; ``ReplicaFailed`` for an error event or garbage."""
    try:
        chunk = pydantic_core.from_json(data)  # Rust: a fraction of json.loads's cost, once per token
    except ValueError as exc:
        raise ReplicaFailed(f"{replica.url} sent an event that is not JSON: {data[:100]!r}") from exc
    if not isinstance(chunk, dict):
        raise ReplicaFailed(f"{replica.url} sent an event that is not a JSON object: {data[:100]!r}")
    if "error" in chunk:  # vLLM reports this request's failure mid-stream as an error event
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise ReplicaFailed(f"{replica.url}: {message}", eject=False)
    return chunk
