"""Every console page (a tenant's and the operator's) in a real headless Chromium at a phone's width (390 px):
axe-core (vendored in ``tests/vendor/axe-core``, injected into each page) finds no serious or critical violation,
the page is no wider than the phone, and walking it with the Tab key reaches its controls, each one visibly
focused; the sign-in itself is done with the keyboard alone. The pages are seen as a new tenant sees them (empty
states) and with some usage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.support import ADMIN_KEY, MODEL, REPO
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import openai_client, tenant_key

AXE = (REPO / "tests" / "vendor" / "axe-core" / "axe.min.js").read_text()
PHONE = {"width": 390, "height": 844}
TENANT_PAGES = ["usage", "keys", "models", "aliases", "fine-tuning", "evaluations", "playground"]
OPERATOR_PAGES = ["admin/tenants", "admin/usage", "admin/aliases", "admin/service", "admin/audit"]
TABS = 40
"""Tab presses per page: enough to pass the header and reach the page's own controls."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("a11y")) as running:
        yield running.base


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now: rule, and the elements it names."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE)
    results: dict[str, Any] = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> {[node['target'] for node in v['nodes']][:5]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def unseen_focus(page: Page) -> list[str]:
    """Tab through the page: each element focused that shows no outline (or it never leaves the body)."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.locator("body").focus()
    unseen, reached = [], 0
    for _ in range(TABS):
        page.keyboard.press("Tab")
        focused: dict[str, str] | None = page.evaluate(
            """() => { const e = document.activeElement; if (!e || e === document.body) return null;
                 const s = getComputedStyle(e);
                 const what = e.tagName + (e.id ? '#' + e.id : '') + ' ' + (e.textContent || '').trim().slice(0, 20);
                 const none = s.outlineStyle === 'none' || parseFloat(s.outlineWidth) === 0;
                 return {what, outline: none ? 'none' : 'shown'}; }"""
        )
        if focused is None:
            continue
        reached += 1
        if focused["outline"] == "none":
            unseen.append(focused["what"])
    return unseen if reached else ["nothing took the focus"]


def keyboard_sign_in(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/console/login")
    page.keyboard.press("Tab")  # the skip link first
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    while page.evaluate("document.activeElement.id") != "key":
        page.keyboard.press("Tab")
    page.keyboard.type(key)
    page.keyboard.press("Enter")


def check_pages(browser: Browser, base: str, key: str, pages: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    page = browser.new_page(viewport=PHONE, bypass_csp=True)  # axe is injected as a script the CSP would refuse
    keyboard_sign_in(page, base, key)
    page.wait_for_url("**/console/admin/tenants" if key == ADMIN_KEY else "**/console/usage")
    for name in pages:
        page.goto(f"{base}/console/{name}")
        page.wait_for_load_state("networkidle")
        problems = serious_violations(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            problems.append(f"{width} px wide at {PHONE['width']}")
        problems += [f"focus not visible on {what}" for what in unseen_focus(page)]
        if problems:
            found[name] = problems
    page.goto(f"{base}/console/login?signed_out")
    found_login = serious_violations(page)
    if found_login:
        found["login"] = found_login
    page.close()
    return found


def keyboard_sorts(browser: Browser, base: str, key: str) -> bool:
    """A usage table sorts from the keyboard: Tab to its first header, Enter."""
    page = browser.new_page(viewport=PHONE)
    keyboard_sign_in(page, base, key)
    page.wait_for_url("**/console/usage")
    for _ in range(TABS):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "TH":
            page.keyboard.press("Enter")
            break
    sorted_by = page.evaluate("document.activeElement.getAttribute('aria-sort')")
    page.close()
    return bool(sorted_by == "ascending")


def report(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{name}: {problem}" for name, problems in found.items() for problem in problems)


def test_every_page_is_accessible_at_a_phones_width(base: str, browser: Browser) -> None:
    _, new_tenant = tenant_key(base, "new")
    found = check_pages(browser, base, new_tenant, TENANT_PAGES)  # empty states
    assert not found, report(found)
    busy_id, busy_tenant = tenant_key(base, "busy")
    openai_client(base, busy_tenant).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    found = check_pages(browser, base, busy_tenant, ["usage", "playground"])
    assert keyboard_sorts(browser, base, busy_tenant)
    operator_pages = [*OPERATOR_PAGES, f"admin/tenants/{busy_id}"]
    found |= {
        f"operator's {name}": problems
        for name, problems in check_pages(browser, base, ADMIN_KEY, operator_pages).items()
    }
    assert not found, report(found)
