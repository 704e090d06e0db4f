"""The console signed in to: as a browser would be without one (a same-origin form post, and the CSRF token its
pages carry), and in a real headless Chromium (Debian's, driven by Playwright; the ``browser`` fixture)."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Browser, Page

from tests.support import ADMIN_KEY

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]


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


def sign_in(page: Page, base: str, key: str) -> None:
    """Fills in and sends the sign-in form, from the console's front door."""
    page.goto(f"{base}/console")
    assert page.url.endswith("/console/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def signed_in(browser: Browser, base: str, key: str, **page_options: Any) -> Page:
    """A new page (``page_options``: e.g. its ``viewport``) signed in with ``key``, on the page it lands on (the
    operator's tenants, a tenant's usage)."""
    page = browser.new_page(**page_options)
    sign_in(page, base, key)
    page.wait_for_url("**/console/admin/tenants" if key == ADMIN_KEY else "**/console/usage")
    return page


def cookies_of(page: Page) -> dict[str, str]:
    """The page's cookies (its session), for calls made beside the browser."""
    return {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}


def confirm(page: Page) -> None:
    """Answers yes in the console's confirmation dialog (``confirm.js``), which a destructive button opens."""
    page.locator("#confirm[open] #confirm-yes").click()
