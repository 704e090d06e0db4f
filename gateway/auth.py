"""Authentication: ``Authorization: Bearer <key>`` to a principal (tenant key) or to the operator (admin key).

Keys are looked up by their SHA-256 digest (so lookup timing says nothing about the key), through an
in-memory cache with a short TTL (``LLMAAS_KEY_CACHE_TTL_SECONDS``, at most 5 s): a key revoked or a tenant
changed through this gateway is forgotten at once, through another gateway or the CLI within the TTL.
The admin key is compared in constant time."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.errors import AuthenticationError, PermissionDenied
from gateway.tenancy.keys import key_hash
from gateway.tenancy.service import KeyIdentity, TenancyService, utcnow

_MAX_CACHED = 100_000


class KeyCache:
    def __init__(self, service: TenancyService, ttl_seconds: float) -> None:
        self._service = service
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, KeyIdentity]] = {}
        self._lookups: dict[str, asyncio.Future[KeyIdentity | None]] = {}

    async def identify(self, key: str) -> KeyIdentity | None:
        hashed = key_hash(key)
        cached = self._entries.get(hashed)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        # One database lookup per key however many requests with it arrive while it runs (a burst after
        # the TTL expired would otherwise queue one lookup per request in the thread pool).
        pending = self._lookups.get(hashed)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(hashed, now))
            self._lookups[hashed] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(hashed, None))
        return await asyncio.shield(pending)

    async def _lookup(self, hashed: str, now: float) -> KeyIdentity | None:
        identity = await run_in_threadpool(self._service.identify, hashed)
        if identity is None:
            self._entries.pop(hashed, None)
            return None
        if len(self._entries) >= _MAX_CACHED:
            self._entries.pop(next(iter(self._entries)))
        self._entries[hashed] = (now, identity)
        return identity

    def forget_tenant(self, tenant_id: str) -> None:
        self._lookups.clear()  # a lookup under way may have read the old state
        for hashed in [h for h, (_, ident) in self._entries.items() if ident.tenant_id == tenant_id]:
            self._entries.pop(hashed, None)


@dataclass(frozen=True)
class Principal:
    """The tenant (and key) a request acts for."""

    identity: KeyIdentity

    @property
    def tenant_id(self) -> str:
        return self.identity.tenant_id

    @property
    def key_id(self) -> str:
        return self.identity.key_id

    def check_model(self, model: str) -> None:
        allowed = self.identity.allowed_models
        if allowed is not None and model not in allowed:
            raise PermissionDenied(
                f"This API key may not use the model '{model}'.", param="model", code="model_not_allowed"
            )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _mask(key: str) -> str:
    return key if len(key) < 12 else f"{key[:6]}...{key[-4:]}"


def _is_admin(request: Request, token: str) -> bool:
    admin_key: str = request.app.state.admin_key
    return hmac.compare_digest(token.encode(), admin_key.encode())


def _check_active(identity: KeyIdentity, now: datetime) -> None:
    if identity.revoked:
        raise AuthenticationError("This API key has been revoked.")
    if identity.expires_at is not None and identity.expires_at <= now:
        raise AuthenticationError("This API key has expired.")
    if identity.tenant_status != "active":
        raise PermissionDenied("Your organization is suspended. Contact your operator.", code="tenant_suspended")


async def get_principal(request: Request) -> Principal:
    token = _bearer(request)
    if token is None:
        raise AuthenticationError(
            "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer sk-...'."
        )
    if _is_admin(request, token):
        raise PermissionDenied(
            "The admin key cannot call the OpenAI API; use a tenant's API key.", code="admin_key_not_allowed"
        )
    cache: KeyCache = request.app.state.key_cache
    identity = await cache.identify(token)
    if identity is None:
        raise AuthenticationError(f"Incorrect API key provided: {_mask(token)}.")
    _check_active(identity, utcnow())
    principal = Principal(identity)
    request.state.principal = principal
    return principal


async def require_admin(request: Request) -> None:
    token = _bearer(request)
    if token is None:
        raise AuthenticationError("The admin API needs the admin key: 'Authorization: Bearer sk-admin-...'.")
    if _is_admin(request, token):
        return
    cache: KeyCache = request.app.state.key_cache
    if await cache.identify(token) is not None:
        raise PermissionDenied("Tenant API keys cannot use the admin API.", code="admin_key_required")
    raise AuthenticationError(f"Incorrect admin key provided: {_mask(token)}.")


PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Depends(require_admin)
