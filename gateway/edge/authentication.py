"""Authentication at the edge: the bearer token is checked before the request's body is read, so a client
without a valid key costs one header lookup, however large the body it announces or sends. The principal it
finds goes into the request's context for the route's dependencies (``gateway.tenancy.principal``)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import APIError
from gateway.tenancy.principal import Authenticator, Realm, realm_of


class AuthenticationMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Callable[[], Authenticator]) -> None:
        self.app = app
        self.authenticator = authenticator  # built in the lifespan, after this middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        realm = realm_of(scope["path"]) if scope["type"] == "http" else Realm.PUBLIC
        if realm is Realm.PUBLIC:
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization", "")
        try:
            principal = await self.authenticator().authenticate(authorization, realm)
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        scope["state"]["context"].principal = principal
        await self.app(scope, receive, send)
