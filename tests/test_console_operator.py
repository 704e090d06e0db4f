"""The operator running a tenant from the console alone, in a real headless Chromium (Debian's, driven by
Playwright) against a gateway process (the instant fake engine stands in for vLLM): create a tenant, set its
quotas, weight and prices, issue its first key (shown once, copied with the copy button), use it with the official
``openai`` client until the key's own budget refuses it, see it in the keys list with its last use, lift its
budget, revoke it (after a confirmation, which can be declined), suspend and resume the tenant, delete it with its
data; the page at phone width with every key's revoke button in sight. Each step is checked against the admin
API, the same services the page calls."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page

from tests.support import ADMIN, ADMIN_KEY, MODEL
from tests.support.console import confirm, signed_in
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import openai_client


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("console-operator"), key_activity_flush_seconds=0.2) as running:
        yield running.base


def chat(base: str, key: str) -> str | None:
    answer = openai_client(base, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    return answer.choices[0].message.content


def key_row(page: Page, name: str) -> str:
    return f"#keys tbody tr[data-name='{name}']"


def test_the_operator_runs_a_tenant_from_the_console(base: str, browser: Browser) -> None:
    page = signed_in(browser, base, ADMIN_KEY, viewport={"width": 1100, "height": 900})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    name = f"flow-{uuid.uuid4().hex[:6]}"
    page.fill("#tenant-name", name)
    page.click("#create-tenant button")
    page.wait_for_url("**/console/admin/tenants/ten_*")  # created: on to its own page
    tenant_id = page.locator("#tenant").get_attribute("data-tenant-id")
    api = f"{base}/admin/v1/tenants/{tenant_id}"

    page.fill("#limits-form input[name=requests_per_minute]", "100")
    page.fill("#limits-form input[name=monthly_cost_budget]", "12.5")
    page.fill("#limits-form input[name=scheduling_weight]", "3")
    page.click("#limits-form button")
    page.wait_for_selector("#limits-saved:text('Saved.')")
    page.fill(f"#prices tr[data-model='{MODEL}'] input[name=input]", "1")
    page.fill(f"#prices tr[data-model='{MODEL}'] input[name=output]", "2.5")
    page.click("#prices-form button")
    page.wait_for_selector("#prices-saved:text('Saved.')")
    tenant = httpx.get(api, headers=ADMIN).json()
    assert (tenant["requests_per_minute"], tenant["scheduling_weight"]) == (100, 3)
    assert Decimal(tenant["monthly_cost_budget"]) == Decimal("12.5")
    price = {part: Decimal(value) for part, value in tenant["model_prices"][MODEL].items() if value is not None}
    assert price == {"input": 1, "output": Decimal("2.5")}
    page.reload()  # what was saved is what the page shows
    assert page.input_value("#limits-form input[name=scheduling_weight]") == "3"
    assert page.input_value(f"#prices tr[data-model='{MODEL}'] input[name=output]") == "2.5"

    assert page.locator("#create-key button").inner_text() == "Issue the first key"
    page.fill("#key-name", "first")
    page.fill("#key-tokens", "40")
    page.click("#create-key button")
    page.wait_for_selector("#created:not([hidden])")
    key = page.locator("#new-key").inner_text()
    assert key.startswith("sk-")
    page.click("#created [data-copy]")
    page.wait_for_selector("#created [data-copy]:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == key  # the copy button copied the whole key
    page.reload()
    assert page.locator("#created").is_hidden() and key not in page.content()  # shown once

    served = 0
    with pytest.raises(openai.RateLimitError) as refused:
        while served < 20:
            chat(base, key)
            served += 1
    assert served >= 1 and refused.value.code == "insufficient_quota"  # the key's own 40 tokens, not the tenant's
    row = page.locator(key_row(page, "first"))
    for _ in range(50):  # last use is written in batches (every 0.2 s here)
        page.reload()
        if row.locator(".last-used").inner_text() != "never":
            break
    assert row.locator(".last-used").inner_text() != "never"
    assert row.locator("code").inner_text() == key[:12] + "\u2026"  # the prefix, never the key
    assert row.locator("[data-field=monthly_token_budget]").inner_text() == "40"

    row.locator(".budgets").click()
    page.fill("#key-budgets-form input[name=monthly_token_budget]", "")
    page.click("#key-budgets-form button[value=save]")
    page.locator(f"{key_row(page, 'first')} [data-field=monthly_token_budget]:text-is('\u2013')").wait_for()
    assert chat(base, key)  # its own budget lifted: the tenant's alone applies

    row.locator(".revoke").click()
    assert "first" in page.locator("#confirm-message").inner_text()
    page.locator("#confirm button[value=no]").click()  # declined: nothing happens
    assert chat(base, key)
    row.locator(".revoke").click()
    confirm(page)
    page.locator(f"{key_row(page, 'first')} td.status-revoked").wait_for()
    with pytest.raises(openai.AuthenticationError):
        chat(base, key)

    page.fill("#key-name", "second")
    page.click("#create-key button")
    page.wait_for_selector("#created:not([hidden])")
    second = page.locator("#new-key").inner_text()
    page.reload()
    for width in (1100, 390):  # every key's revoke button in sight, on a desktop and at phone width
        page.set_viewport_size({"width": width, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        revoke = page.locator(f"{key_row(page, 'second')} .revoke").bounding_box()
        assert revoke is not None and revoke["x"] >= 0 and revoke["x"] + revoke["width"] <= width, width
    page.set_viewport_size({"width": 1100, "height": 900})
    page.click("#suspend")
    confirm(page)
    page.wait_for_selector("#tenant[data-status='suspended']")
    with pytest.raises(openai.PermissionDeniedError):
        chat(base, second)
    page.click("#resume")  # resuming destroys nothing: no question
    page.wait_for_selector("#tenant[data-status='active']")
    assert chat(base, second)

    page.click("#delete")
    assert page.locator("#confirm-yes").inner_text() == f"Delete {name}"
    confirm(page)
    page.wait_for_url("**/console/admin/tenants")
    assert page.locator(f"#tenants tbody tr[data-name='{name}']").count() == 0
    assert httpx.get(api, headers=ADMIN).status_code == 404  # gone, as the admin API's delete leaves it
    with pytest.raises(openai.AuthenticationError):
        chat(base, second)
    page.close()
