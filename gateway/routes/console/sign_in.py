"""Signing in and out of the console. Sign-in takes only a form a browser posted from the console's own page,
is throttled after failures, and sets the session's cookie (HttpOnly, SameSite=Strict, ``Secure`` over TLS)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.edge.origin import from_a_browser
from gateway.errors import APIError
from gateway.routes.console.pages import Refused, page
from gateway.routes.console.visits import CsrfField, VisitDep
from gateway.state import AuthenticatorDep, ConsoleSessionsDep, ContextDep, SignInThrottleDep
from gateway.tenancy.console_sessions import COOKIE, ConsoleSession
from gateway.tenancy.principal import CONSOLE_OPERATOR, Operator, sign_in

router = APIRouter(prefix="/console")


def _home(session: ConsoleSession) -> str:
    return "/console/admin/tenants" if session.is_operator else "/console/usage"


SIGNED_OUT = "/console/login?signed_out"
"""Where sign-out sends the browser: the sign-in page, saying the session ended."""


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return page(request, "login.html", error=None, signed_out="signed_out" in request.query_params)


@router.post("/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=512)],
    context: ContextDep,
    authenticator: AuthenticatorDep,
    sessions: ConsoleSessionsDep,
    throttle: SignInThrottleDep,
) -> Response:
    # A session cookie is only ever set for a form a browser posted from the console's own page.
    if not from_a_browser(request.scope):
        raise Refused("Sign in from the console's own page (the request carried neither Origin nor Sec-Fetch-Site).")
    address = context.client_address or ""
    key = key.strip()
    try:
        await throttle.check(address)
        try:
            principal = await sign_in(authenticator, key)
        except APIError:
            await throttle.failed(address)
            raise
    except APIError as exc:
        answer = page(request, "login.html", status_code=exc.status_code, error=exc.message)
        answer.headers.update(exc.headers)
        return answer
    context.principal = principal
    if isinstance(principal, Operator):
        cookie, session = await sessions.start(CONSOLE_OPERATOR, None, None, context.actor())
    else:
        cookie, session = await sessions.start(
            principal.key_id, principal.tenant_id, principal.identity.expires_at, context.actor()
        )
    response = RedirectResponse(_home(session), 303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=sessions.max_age_seconds,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(visit: VisitDep, sessions: ConsoleSessionsDep, csrf: CsrfField = None) -> Response:
    visit.check_csrf(csrf)
    await sessions.end(visit.session, visit.actor)
    response = RedirectResponse(SIGNED_OUT, 303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("")
async def home(visit: VisitDep) -> Response:
    return RedirectResponse(_home(visit.session), 303)
