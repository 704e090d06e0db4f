"""Cross-site requests to the console are refused. A state-changing request (POST, PUT, PATCH, DELETE) under
``/console`` (pages, sign-in and sign-out, the ``/console/api`` bridge) is refused when its ``Origin`` header
is present and is not the console's own origin (scheme and host the request reached), or when its
``Sec-Fetch-Site`` header is present and is not ``same-origin``.

A request with neither header is not a browser's (every current browser sends at least one on a POST): it must
carry the session's CSRF token, as every console form and bridge call does. Sign-in, which has no session yet,
refuses such a request outright."""

from __future__ import annotations

from starlette.datastructures import URL, Headers
from starlette.types import Scope

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def own_origin(scope: Scope) -> str:
    url = URL(scope=scope)
    return f"{url.scheme}://{url.netloc}"


def cross_site(scope: Scope) -> str | None:
    """Why this request is refused as cross-site, or None."""
    if scope["method"] not in STATE_CHANGING:
        return None
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is not None and origin != own_origin(scope):
        return "This request came from another site's page; use the console's own pages."
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        return "This request came from another site's page (Sec-Fetch-Site); use the console's own pages."
    return None


def from_a_browser(scope: Scope) -> bool:
    """Whether the request carries ``Origin`` or ``Sec-Fetch-Site`` (what sign-in requires)."""
    headers = Headers(scope=scope)
    return "origin" in headers or "sec-fetch-site" in headers
