"""What one request carries through the gateway: its ``RequestContext`` (the server-minted id that keys every
reservation, engine request and ledger record; the client's own id; the principal it acts for; headers left for
the response), read from a request in one typed way (``context_of``), and the one mapping from the principal
to the audit log's actor (``RequestContext.actor``).

Set by the outermost middleware (``gateway.edge.request_context``); the principal by the edge's authentication
or, for a console page, by the console's session dependency. Work started without a request (an eval run)
makes a context of its own (``new_request_id``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from starlette.types import Scope

from gateway.audit import OPERATOR, SYSTEM, Actor
from gateway.tenancy.principal import Operator, Principal, TenantPrincipal


@dataclass
class RequestContext:
    id: str
    """Minted here (``req_`` + 32 hex); the only id any accounting state is keyed by."""
    client_request_id: str | None = None
    client_address: str | None = None
    principal: Principal | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    """Headers a dependency leaves for the response (the rate-limit headers)."""

    def actor(self) -> Actor:
        """Who acts, for the audit log: a tenant's key (with its tenant), the operator, else the system."""
        if isinstance(self.principal, TenantPrincipal):
            actor, tenant_id = self.principal.key_id, self.principal.tenant_id
        else:
            actor, tenant_id = (OPERATOR if isinstance(self.principal, Operator) else SYSTEM), None
        return Actor(actor, tenant_id, self.id, self.client_address)


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def context_of(scope: Scope) -> RequestContext:
    """The request's context, from its ASGI scope's state (``gateway.edge.request_context`` put it there)."""
    context: RequestContext = scope["state"]["context"]
    return context
