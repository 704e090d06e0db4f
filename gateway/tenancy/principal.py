"""Who a request acts for: a tenant (an API key), the operator (the admin key) or a metrics scraper (the
metrics token), from ``Authorization: Bearer <token>`` or from a key's id (a console session, an eval run); the
typed dependencies routes declare for it are in ``gateway.state``.

Which realm a path belongs to decides what it needs: ``/v1/...`` a tenant's key, ``/admin/...`` the admin key,
``/metrics`` the admin key or the metrics token; anything else is public. The edge resolves the principal
before any body is read (``gateway.edge.authentication``); the dependencies only read what it found. Whatever
the way in, a tenant's key is checked as it is now in one place (``Authenticator.principal_of_key`` for a key
known by its id, the same check for a bearer token)."""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from gateway.clock import utcnow
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.tenancy.key_activity import KeyActivity
from gateway.tenancy.key_cache import KeyCache
from gateway.tenancy.keys import has_key_shape
from gateway.tenancy.service import KeyIdentity

CONSOLE_OPERATOR = "operator"
"""The subject of the operator's console sessions (a tenant's session names its key's id)."""


class Realm(enum.Enum):
    PUBLIC = "public"
    TENANT = "tenant"
    OPERATOR = "operator"
    METRICS = "metrics"


def realm_of(path: str) -> Realm:
    if path.startswith("/v1/") or path == "/v1":
        return Realm.TENANT
    if path.startswith("/admin/") or path == "/admin":
        return Realm.OPERATOR
    if path == "/metrics":
        return Realm.METRICS
    return Realm.PUBLIC


@dataclass(frozen=True)
class TenantPrincipal:
    """The tenant (and key) a request acts for."""

    identity: KeyIdentity

    @property
    def tenant_id(self) -> str:
        return self.identity.tenant_id

    @property
    def key_id(self) -> str:
        return self.identity.key_id

    def may_use(self, model: str, alias_of: Collection[str] = ()) -> bool:
        """Whether the key may call ``model``; a tenant's alias (``alias_of``: every model it may pick) is allowed
        by its own name, or by all the models it may pick (never by some: a split cannot pick one the key may not
        use)."""
        allowed = self.identity.allowed_models
        return allowed is None or model in allowed or (bool(alias_of) and set(alias_of) <= set(allowed))

    def check_model(self, model: str, alias_of: Collection[str] = ()) -> None:
        if not self.may_use(model, alias_of):
            raise PermissionDenied("This API key may not use that model.", param="model", code="model_not_allowed")


@dataclass(frozen=True)
class Operator:
    """The holder of the admin key."""


@dataclass(frozen=True)
class MetricsReader:
    """The holder of the metrics token."""


Principal = TenantPrincipal | Operator | MetricsReader

MISSING_TOKEN = {
    Realm.TENANT: "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer sk-...'.",
    Realm.OPERATOR: "The admin API needs the admin key: 'Authorization: Bearer sk-admin-...'.",
    Realm.METRICS: "/metrics needs the admin key or the metrics token: 'Authorization: Bearer ...'.",
}


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _mask(key: str) -> str:
    return key[:4] + "..." if len(key) < 12 else f"{key[:6]}...{key[-4:]}"


def _same(token: str, secret: str | None) -> bool:
    return secret is not None and hmac.compare_digest(token.encode(), secret.encode())


def _active(identity: KeyIdentity, now: datetime) -> TenantPrincipal:
    """The key's tenant principal, if the key is neither revoked nor expired and its tenant is active."""
    if identity.revoked:
        raise AuthenticationError("This API key has been revoked.")
    if identity.expires_at is not None and identity.expires_at <= now:
        raise AuthenticationError("This API key has expired.")
    if identity.tenant_status != "active":
        raise PermissionDenied("Your organization is suspended. Contact your operator.", code="tenant_suspended")
    return TenantPrincipal(identity)


class Authenticator:
    """Tokens to principals for one realm; raises ``AuthenticationError`` (401) or ``PermissionDenied`` (403)."""

    def __init__(
        self,
        keys: KeyCache,
        admin_key: str,
        metrics_token: str | None,
        key_by_id: Callable[[str], KeyIdentity | None] | None = None,
        activity: KeyActivity | None = None,
    ) -> None:
        self._keys = keys
        self._admin_key = admin_key
        self._metrics_token = metrics_token
        self._key_by_id = key_by_id
        self._activity = activity

    def _used(self, principal: TenantPrincipal) -> TenantPrincipal:
        """A request authenticated by the key: noted for its ``last_used_at`` (in memory; written in batches)."""
        if self._activity is not None:
            self._activity.seen(principal.key_id)
        return principal

    async def principal_of_key(self, key_id: str) -> TenantPrincipal:
        """The tenant principal of the key with this id, read as the key is now: work done on a key's behalf (a
        console session, an eval run) stops when the key is revoked or expires, or its tenant is suspended.
        Raises ``AuthenticationError`` (``invalid_api_key``) or ``PermissionDenied`` (``tenant_suspended``)."""
        identity = await run_in_threadpool(self._key_by_id, key_id) if self._key_by_id else None
        if identity is None:
            raise AuthenticationError("This API key no longer exists.")
        return _active(identity, utcnow())

    async def console_principal(self, subject: str) -> TenantPrincipal | Operator:
        """The principal of a console session (``CONSOLE_OPERATOR`` or a key id)."""
        return Operator() if subject == CONSOLE_OPERATOR else await self.principal_of_key(subject)

    async def of_console_session(self, subject: str, realm: Realm) -> Principal:
        """A console session's principal for an API request of ``realm``: tenants reach /v1, the operator /admin."""
        principal = await self.console_principal(subject)
        if isinstance(principal, Operator) and realm is Realm.TENANT:
            raise PermissionDenied("The operator's console session cannot call the OpenAI API.")
        if isinstance(principal, TenantPrincipal):
            if realm is not Realm.TENANT:
                raise PermissionDenied("A tenant's console session cannot use this route.", code="admin_key_required")
            return self._used(principal)
        return principal

    async def authenticate(self, authorization: str, realm: Realm) -> Principal:
        token = bearer_token(authorization)
        if token is None or len(token) > 512:
            raise AuthenticationError(MISSING_TOKEN[realm] if token is None else "Incorrect API key provided.")
        if _same(token, self._admin_key):
            if realm is Realm.TENANT:
                raise PermissionDenied(
                    "The admin key cannot call the OpenAI API; use a tenant's API key.", code="admin_key_not_allowed"
                )
            return Operator()
        if realm is Realm.METRICS and _same(token, self._metrics_token):
            return MetricsReader()
        identity = await self._keys.identify(token) if has_key_shape(token) else None
        if identity is None:
            raise AuthenticationError(f"Incorrect API key provided: {_mask(token)}.")
        if realm is not Realm.TENANT:
            raise PermissionDenied("Tenant API keys cannot use this route.", code="admin_key_required")
        return self._used(_active(identity, utcnow()))


async def sign_in(authenticator: Authenticator, token: str) -> TenantPrincipal | Operator:
    """The console's sign-in: the admin key is the operator, an active tenant key its tenant."""
    try:
        principal = await authenticator.authenticate(f"Bearer {token}", Realm.OPERATOR)
    except PermissionDenied:  # a valid tenant key, refused by the operator's realm: the tenant's, if active
        principal = await authenticator.authenticate(f"Bearer {token}", Realm.TENANT)
    if isinstance(principal, MetricsReader):
        raise AuthenticationError("The metrics token cannot sign in to the console.")
    return principal
