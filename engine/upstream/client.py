"""The HTTP calls to one replica (vLLM's OpenAI server): its checks, its adapters, and a streamed completion.
Every call raises ``ReplicaFailed`` (the replica's fault: try another) or ``RequestRejected`` (the request's)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from engine.protocol import RequestRejected
from engine.upstream.replica import ModelCard, Replica
from engine.upstream.signals import ReplicaSignals, parse_metrics

ERROR_BODY_LIMIT = 4096


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


def _headers(replica: Replica) -> dict[str, str]:
    return {"Authorization": f"Bearer {replica.spec.api_key}"} if replica.spec.api_key else {}


async def _error_text(response: httpx.Response) -> str:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_LIMIT:
            break
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", errors="replace")
    try:
        error = json.loads(text)
        return str(error.get("error", {}).get("message") or error.get("message") or text)
    except (ValueError, AttributeError):
        return text


async def _raise_for(response: httpx.Response, replica: Replica) -> None:
    if response.status_code < 400:
        return
    message = await _error_text(response)
    if response.status_code == 404:
        raise ModelMissing(f"{replica.url}: {message}")
    if response.status_code in (408, 429) or response.status_code >= 500:
        # Overload and unreachable-behind-a-proxy say "this replica"; another 5xx may be this request's doing,
        # so it counts towards ejection rather than ejecting at once (one tenant must not eject every replica).
        eject = response.status_code in (429, 502, 503, 504)
        raise ReplicaFailed(f"{replica.url} answered {response.status_code}: {message}", eject=eject)
    raise RequestRejected(message)


class ReplicaClient:
    def __init__(self, http: httpx.AsyncClient, fallback_max_model_len: int) -> None:
        self._http = http
        self._fallback_max_model_len = fallback_max_model_len

    async def _call(self, replica: Replica, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, replica.url + path, headers=_headers(replica), **kwargs)
        except httpx.HTTPError as exc:
            raise ReplicaFailed(f"{replica.url}{path}: {exc!r}") from exc
        await _raise_for(response, replica)
        return response

    async def scrape(self, replica: Replica) -> tuple[ReplicaSignals, dict[str, ModelCard], list[str]]:
        """Its health, load, base models and loaded adapters (one active check). A server in front of vLLM
        (Ray Serve LLM, a production-stack router) may have no ``/health`` or ``/metrics`` and may not say a
        model's context length: its ``/v1/models`` answering is then the check, the router counts only its own
        requests on it, and ``fallback_max_model_len`` stands in (the server still refuses what is too long)."""
        await self._optional(replica, "/health")
        metrics = await self._optional(replica, "/metrics")
        listing = (await self._call(replica, "GET", "/v1/models")).json()
        models: dict[str, ModelCard] = {}
        adapters: list[str] = []
        for card in listing.get("data", []):
            if card.get("parent"):
                adapters.append(str(card["id"]))
                continue
            model_id = str(card["id"])
            length = card.get("max_model_len") or (card.get("metadata") or {}).get("max_request_context_length")
            models[model_id] = ModelCard(
                model_id, str(card.get("root") or model_id), int(length or self._fallback_max_model_len)
            )
        signals = parse_metrics(metrics.text) if metrics is not None else ReplicaSignals()
        return signals, models, adapters

    async def _optional(self, replica: Replica, path: str) -> httpx.Response | None:
        """``GET path``, or None where the server has no such route."""
        try:
            return await self._call(replica, "GET", path)
        except ModelMissing:  # a 404
            return None

    async def load_adapter(self, replica: Replica, name: str, path: str) -> None:
        try:
            await self._call(replica, "POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        except RequestRejected as exc:
            if "already" not in str(exc):  # loaded by another gateway meanwhile: as good as our load
                raise ReplicaFailed(f"{replica.url} could not load adapter {name}: {exc}") from exc

    async def unload_adapter(self, replica: Replica, name: str) -> None:
        with contextlib.suppress(RequestRejected, ModelMissing):  # not loaded there (any more): nothing to undo
            await self._call(replica, "POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    @asynccontextmanager
    async def stream_completion(
        self, replica: Replica, body: dict[str, Any], timeout: httpx.Timeout
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """The chunks of a streamed ``/v1/completions`` (``data:`` lines, parsed). Leaving the context closes the
        connection, which makes vLLM abort the request."""
        request = self._http.build_request(
            "POST", replica.url + "/v1/completions", json=body, headers=_headers(replica), timeout=timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ReplicaFailed(f"{replica.url}: {exc!r}") from exc
        try:
            await _raise_for(response, replica)
            yield _chunks(response, replica)
        finally:
            await response.aclose()


async def _chunks(response: httpx.Response, replica: Replica) -> AsyncIterator[Any]:
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:  # vLLM reports a failure mid-stream as an error event
                raise ReplicaFailed(f"{replica.url}: {chunk['error'].get('message', chunk['error'])}")
            yield chunk
    except httpx.HTTPError as exc:
        raise ReplicaFailed(f"{replica.url} broke off the stream: {exc!r}") from exc
    raise ReplicaFailed(f"{replica.url} ended the stream without [DONE]")
