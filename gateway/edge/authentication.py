"""Authentication at the edge: the bearer token is checked before the request's body is read, so a client
without a valid key costs one header lookup, however large the body it announces or sends. The principal it
finds goes into the request's context for the route's dependencies (``gateway.state``).

The console's pages call the same APIs from the browser under ``/console/api`` (``/console/api/v1/models`` is
``/v1/models``): there the session cookie stands for the bearer token, with the session's CSRF token in the
``X-CSRF-Token`` header, and the path is handed on without the prefix. The session's row is read on every call
(a session ended anywhere is refused at once), and a state-changing call from another site is refused
(``gateway.edge.origin``)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import context_of
from gateway.edge.origin import cross_site
from gateway.errors import APIError, AuthenticationError, PermissionDenied
from gateway.tenancy.console_sessions import COOKIE, ConsoleSessions
from gateway.tenancy.principal import Authenticator, Realm, realm_of

CONSOLE_API = "/console/api"


class AuthenticationMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Callable[[], Authenticator],
        console_sessions: Callable[[], ConsoleSessions],
    ) -> None:
        self.app = app
        self.authenticator = authenticator  # built in the lifespan, after this middleware
        self.console_sessions = console_sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(CONSOLE_API + "/"):
            await self._console_api(scope, receive, send)
            return
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
        context_of(scope).principal = principal
        await self.app(scope, receive, send)

    async def _console_api(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"][len(CONSOLE_API) :]
        realm = realm_of(path)
        headers = Headers(scope=scope)
        try:
            if realm not in (Realm.TENANT, Realm.OPERATOR):
                raise PermissionDenied("The console's API bridge only reaches /v1 and /admin.")
            reason = cross_site(scope)
            if reason is not None:
                raise PermissionDenied(reason, code="cross_site_request")
            session = await self.console_sessions().check(cookie_parser(headers.get("cookie", "")).get(COOKIE))
            if session is None:
                raise AuthenticationError("Sign in to the console first.")
            if not session.csrf_matches(headers.get("x-csrf-token")):
                raise PermissionDenied("The X-CSRF-Token header is missing or wrong.", code="csrf_failed")
            principal = await self.authenticator().of_console_session(session.subject, realm)
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        context_of(scope).principal = principal
        raw_path = scope.get("raw_path")
        bridged = {**scope, "path": path}
        if isinstance(raw_path, bytes):
            bridged["raw_path"] = raw_path[len(CONSOLE_API) :]
        await self.app(bridged, receive, send)
