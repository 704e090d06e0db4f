"""Who is signed in: the typed dependencies every console page declares. ``VisitDep`` reads the session's row
(one read: a session ended anywhere is refused at once), checks the key behind it as it is now
(``Authenticator.console_principal``) and makes its principal the request's, so the audit actor is the one
every other route records (``RequestContext.actor``). ``TenantVisitDep`` and ``OperatorVisitDep`` also refuse
the other kind of session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Form, Request

from gateway.audit import Actor
from gateway.errors import APIError
from gateway.routes.console.pages import Refused, SignInRequired
from gateway.state import AuthenticatorDep, ConsoleSessionsDep, ContextDep
from gateway.tenancy.console_sessions import COOKIE, ConsoleSession
from gateway.tenancy.principal import Operator, TenantPrincipal

P = TypeVar("P", TenantPrincipal, Operator, TenantPrincipal | Operator)

CsrfField = Annotated[str | None, Form(max_length=128)]
"""The CSRF token every state-changing form posts (``csrf``)."""


@dataclass(frozen=True)
class Visit(Generic[P]):
    """A signed-in request: its console session, the principal it acts for, and that principal as audit actor."""

    session: ConsoleSession
    principal: P
    actor: Actor

    def check_csrf(self, token: str | None) -> None:
        if not self.session.csrf_matches(token):
            raise Refused("The form's CSRF token is missing or wrong; reload the page and try again.")


async def signed_in(
    request: Request, sessions: ConsoleSessionsDep, authenticator: AuthenticatorDep, context: ContextDep
) -> Visit[TenantPrincipal | Operator]:
    session = await sessions.check(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired
    try:
        principal = await authenticator.console_principal(session.subject)
    except APIError as exc:  # revoked, expired, suspended: the session ends
        raise SignInRequired from exc
    context.principal = principal
    return Visit(session, principal, context.actor())


VisitDep = Annotated[Visit[TenantPrincipal | Operator], Depends(signed_in)]


async def tenant_visit(visit: VisitDep) -> Visit[TenantPrincipal]:
    if not isinstance(visit.principal, TenantPrincipal):
        raise Refused("This page is a tenant's; the operator's pages are under /console/admin.")
    return Visit(visit.session, visit.principal, visit.actor)


async def operator_visit(visit: VisitDep) -> Visit[Operator]:
    if not isinstance(visit.principal, Operator):
        raise Refused("This page needs the admin key.")
    return Visit(visit.session, visit.principal, visit.actor)


TenantVisitDep = Annotated[Visit[TenantPrincipal], Depends(tenant_visit)]
OperatorVisitDep = Annotated[Visit[Operator], Depends(operator_visit)]
