"""The console signed in to as a browser would be, without a browser: a same-origin form post, and the CSRF
token its pages carry."""

from __future__ import annotations

import httpx


def console(base: str, key: str, **headers: str) -> httpx.Client:
    """A client signed in to the console with ``key`` (``headers``: more of the browser's, on every request)."""
    client = httpx.Client(base_url=base, headers={"origin": base, **headers})
    signed = client.post("/console/login", data={"key": key})
    assert signed.status_code == 303, signed.text
    return client


def csrf_of(client: httpx.Client, page: str) -> str:
    """The CSRF token of the signed-in session, as ``page`` carries it in its forms."""
    text = client.get(page).text
    return text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
