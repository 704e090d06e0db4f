"""The console's trust rules against a real gateway process (the fake engine) over HTTP, and in headless Chromium
where a browser matters: a copied session cookie stops working after sign-out, key revocation, suspension and
deletion (for the pages and the ``/console/api`` bridge); the cookie is ``Secure`` behind a TLS proxy; failed
sign-ins are throttled per address and per key prefix; cross-site requests are refused; a key made in the
console is never broader than the session's key and only key managers revoke other keys; ``/docs`` and
``/redoc`` load nothing from another origin and run under their CSP."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from playwright.sync_api import Browser

from tests import test_console
from tests.support import ADMIN, ADMIN_KEY, MODEL
from tests.support.console import console, csrf_of, signed_in
from tests.support.tenants import tenant_key

data_dir, base = test_console.data_dir, test_console.base  # its fixtures, here too

EVIL = "https://evil.example"


def refused_everywhere(base: str, cookies: dict[str, str], page: str, csrf: str, bridge: str) -> bool:
    """Whether a copied session cookie is refused by a page and by the API bridge."""
    shown = httpx.get(f"{base}{page}", cookies=cookies)
    bridged = httpx.get(f"{base}/console/api{bridge}", cookies=cookies, headers={"x-csrf-token": csrf})
    return shown.status_code == 303 and shown.headers["location"] == "/console/login" and bridged.status_code == 401


def key_id_of(base: str, tenant_id: str, name: str = "first") -> str:
    keys = httpx.get(f"{base}/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN).json()["data"]
    return next(k["id"] for k in keys if k["name"] == name)


def test_a_copied_cookie_stops_working_after_sign_out(base: str) -> None:
    _, key = tenant_key(base)
    for credential, page, bridge in (
        (key, "/console/usage", "/v1/models"),
        (ADMIN_KEY, "/console/admin/tenants", "/admin/v1/tenants"),
    ):
        client = console(base, credential)
        csrf = csrf_of(client, page)
        copy = dict(client.cookies)
        assert httpx.get(f"{base}{page}", cookies=copy).status_code == 200
        assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
        assert refused_everywhere(base, copy, page, csrf, bridge), credential[:9]
        client.close()


def test_a_copied_cookie_stops_working_after_revocation_suspension_and_deletion(base: str) -> None:
    tenant_id, key = tenant_key(base)
    revoked = console(base, key)
    csrf = csrf_of(revoked, "/console/usage")
    assert httpx.delete(f"{base}/admin/v1/tenants/{tenant_id}/keys/{key_id_of(base, tenant_id)}", headers=ADMIN)
    assert refused_everywhere(base, dict(revoked.cookies), "/console/usage", csrf, "/v1/models")

    tenant_id, key = tenant_key(base)
    suspended = console(base, key)
    csrf = csrf_of(suspended, "/console/usage")
    assert httpx.post(f"{base}/admin/v1/tenants/{tenant_id}/suspend", headers=ADMIN).status_code == 200
    assert httpx.post(f"{base}/admin/v1/tenants/{tenant_id}/resume", headers=ADMIN).status_code == 200
    assert refused_everywhere(base, dict(suspended.cookies), "/console/usage", csrf, "/v1/models")  # stays ended
    assert console(base, key).get("/console/usage").status_code == 200  # signing in again works

    tenant_id, key = tenant_key(base)
    deleted = console(base, key)
    csrf = csrf_of(deleted, "/console/usage")
    assert httpx.delete(f"{base}/admin/v1/tenants/{tenant_id}", headers=ADMIN).status_code == 200
    assert refused_everywhere(base, dict(deleted.cookies), "/console/usage", csrf, "/v1/models")


def test_the_cookie_is_secure_when_the_client_came_over_tls(base: str) -> None:
    _, key = tenant_key(base)
    tls_origin = base.replace("http://", "https://")
    # The gateway trusts X-Forwarded-Proto from 127.0.0.1 (uvicorn's default --forwarded-allow-ips), as from a proxy.
    behind_tls = httpx.post(
        f"{base}/console/login", data={"key": key}, headers={"x-forwarded-proto": "https", "origin": tls_origin}
    )
    assert behind_tls.status_code == 303 and "secure" in behind_tls.headers["set-cookie"].lower()
    plain = httpx.post(f"{base}/console/login", data={"key": key}, headers={"origin": base})
    assert plain.status_code == 303 and "secure" not in plain.headers["set-cookie"].lower()
    assert (
        "httponly" in plain.headers["set-cookie"].lower() and "samesite=strict" in plain.headers["set-cookie"].lower()
    )


def _sign_in(base: str, key: str, address: str) -> httpx.Response:
    headers = {"origin": base, "x-forwarded-for": address}
    return httpx.post(f"{base}/console/login", data={"key": key}, headers=headers)


def test_failed_sign_ins_are_throttled_per_address_never_per_key(base: str) -> None:
    _, key = tenant_key(base)
    unique = uuid.uuid4().hex
    address = "203.0.113.77"
    for n in range(10):  # the default: 10 failures per address per minute
        assert _sign_in(base, f"sk-{unique[:9]}{n}-wrong", address).status_code == 401
    throttled = _sign_in(base, key, address)  # even the right key waits: the key is not even checked
    assert throttled.status_code == 429 and "Too many failed sign-ins" in throttled.text
    assert throttled.headers["content-type"].startswith("text/html") and int(throttled.headers["retry-after"]) >= 1
    assert _sign_in(base, key, "203.0.113.78").status_code == 303  # another address signs in
    for n in range(12):  # failures with the key's own prefix, from many addresses, never lock its owner out
        assert _sign_in(base, key[:12] + "x" * (len(key) - 12), f"198.51.100.{n}").status_code == 401
    assert _sign_in(base, key, "198.51.100.200").status_code == 303


def test_cross_site_requests_are_refused(base: str) -> None:
    _, key = tenant_key(base)
    bare = httpx.post(f"{base}/console/login", data={"key": key})  # neither Origin nor Sec-Fetch-Site: no browser
    assert bare.status_code == 403 and "set-cookie" not in bare.headers
    for headers in ({"origin": EVIL}, {"origin": "null"}, {"sec-fetch-site": "same-site"}, {"sec-fetch-site": "none"}):
        refused = httpx.post(f"{base}/console/login", data={"key": key}, headers=headers)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers, headers
    client = console(base, key)
    csrf = csrf_of(client, "/console/keys")
    cookies = dict(client.cookies)
    for headers in (
        {"origin": EVIL},
        {"sec-fetch-site": "cross-site"},
        {"origin": base, "sec-fetch-site": "same-site"},
    ):
        forged = httpx.post(f"{base}/console/keys", data={"name": "x", "csrf": csrf}, cookies=cookies, headers=headers)
        assert forged.status_code == 403 and "another site" in forged.text, headers
        bridged = httpx.post(
            f"{base}/console/api/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
            cookies=cookies,
            headers={"x-csrf-token": csrf, **headers},
        )
        assert bridged.status_code == 403 and bridged.json()["error"]["code"] == "cross_site_request"
    same_site = {"origin": base, "sec-fetch-site": "same-origin"}
    made = httpx.post(f"{base}/console/keys", data={"name": "ok", "csrf": csrf}, cookies=cookies, headers=same_site)
    assert made.status_code == 200 and 'id="new-key"' in made.text
    no_browser = httpx.post(f"{base}/console/keys", data={"name": "ok", "csrf": csrf}, cookies=cookies)
    assert no_browser.status_code == 200  # neither header: the CSRF token decides
    assert httpx.get(f"{base}/console/keys", cookies=cookies, headers={"origin": EVIL}).status_code == 200  # reads


def _keys(base: str, tenant_id: str) -> dict[str, dict[str, Any]]:
    return {k["name"]: k for k in httpx.get(f"{base}/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN).json()["data"]}


def test_the_console_makes_no_key_broader_than_the_sessions(base: str, browser: Browser) -> None:
    tenant_id, key = tenant_key(base, key={"allowed_models": [MODEL], "expires_in_days": 1})
    sibling = httpx.post(f"{base}/admin/v1/tenants/{tenant_id}/keys", json={"name": "sibling"}, headers=ADMIN)
    assert sibling.json()["key_manager"] is False  # the operator's choice, false unless asked
    page = signed_in(browser, base, key)
    page.goto(f"{base}/console/keys")
    assert page.locator("#key_manager").count() == 0  # not a key manager: not offered
    assert page.locator("#keys tbody tr", has_text="sibling").locator("text=Revoke").count() == 0
    assert page.locator("#keys tbody tr", has_text="first").locator("text=Revoke").count() == 1  # itself
    page.fill("#name", "child")
    page.click("text=Create key")
    assert page.locator("#new-key").inner_text().startswith("sk-")
    keys = _keys(base, tenant_id)
    assert keys["child"]["allowed_models"] == [MODEL]
    assert keys["child"]["expires_at"] == keys["first"]["expires_at"]
    page.fill("#name", "wider")
    page.fill("#models", f"{MODEL}, another-model")
    page.click("text=Create key")
    assert "may only use models yours may" in page.locator(".error").inner_text()  # the refused page
    page.goto(f"{base}/console/keys")
    page.fill("#name", "longer")
    page.fill("#expires_in_days", "30")
    page.click("text=Create key")
    assert "may not outlive yours" in page.locator(".error").inner_text()
    assert set(_keys(base, tenant_id)) == {"first", "sibling", "child"}
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    page.goto(f"{base}/console/keys")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    revoke = httpx.post(f"{base}/console/keys/{sibling.json()['id']}/revoke", data={"csrf": csrf}, cookies=cookies)
    assert revoke.status_code == 403 and "Only a key manager" in revoke.text
    negative = httpx.post(f"{base}/console/keys", data={"expires_in_days": "-1", "csrf": csrf}, cookies=cookies)
    assert negative.status_code == 400 and "Invalid value for &#39;expires_in_days&#39;" in negative.text
    page.close()


def test_the_api_docs_load_nothing_from_elsewhere_under_a_csp(base: str, browser: Browser) -> None:
    for path, rendered in (("/docs", ".opblock"), ("/redoc", "h1")):
        answer = httpx.get(f"{base}{path}")
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "http" not in answer.text.split("<body>", 1)[1]  # no absolute URL: every asset from this origin
        page = browser.new_page()
        requested: list[str] = []
        violations: list[str] = []
        page.on("request", lambda request, seen=requested: seen.append(f"{request.resource_type} {request.url}"))
        page.on("console", lambda message, seen=violations: seen.append(message.text))
        page.goto(f"{base}{path}")
        page.wait_for_selector(rendered, timeout=30_000)
        # Redoc's "by Redocly" logo is the one thing it asks elsewhere for: an image, which the CSP refuses.
        elsewhere = [seen for seen in requested if base not in seen]
        assert elsewhere in ([], ["image https://cdn.redoc.ly/redoc/logo-mini.svg"]), requested
        refused = [text for text in violations if "Content Security Policy" in text]
        assert all("cdn.redoc.ly" in text for text in refused), refused  # every script and style ran
        page.close()
