"""The console's charts in a real headless Chromium, against a fake gateway process: on a tenant's usage page and
the operator's, day charts tick once per day from the 1st and show the whole month so far (today's bar whole, not
cut at the edge), and a cost chart says when no price is set instead of drawing a flat $0; the operator's usage
page has the tenant's charts and a CSV; the service page's per-minute chart ticks as clock times and its windows
count what the gateway answered."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.support import ADMIN_KEY, MODEL
from tests.support.console import signed_in
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import ledgered_usage, tenant_key

DAY_TICK = re.compile(r"[A-Z][a-z]{2} \d{1,2}")
CLOCK_TICK = re.compile(r"\d{2}:\d{2}")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("charts")) as running:
        yield running.base


def chat(base: str, key: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text


def check_day_charts(page: Page) -> None:
    """Each day chart ticks at days from the 1st, and shows from half a day before the 1st to half a day past
    today (whole bars at both ends)."""
    page.wait_for_selector("body[data-charts-drawn='true']")
    now = datetime.now(UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    for chart in ("daily", "cumulative"):
        box = page.locator(f"#chart-{chart}")
        ticks = box.get_attribute("data-x-ticks").split("|")
        assert all(DAY_TICK.fullmatch(tick) for tick in ticks), ticks
        assert ticks[0] == now.strftime("%b ") + "1"
        low, high = map(float, box.get_attribute("data-x-range").split(","))
        assert low <= first - 43200 and high >= today + 43200


def test_charts_say_what_they_mean(base: str, browser: Browser, tmp_path: Path) -> None:
    _, unpriced_key = tenant_key(base, "free", monthly_token_budget=10_000)
    _, priced_key = tenant_key(base, "paid", model_prices={MODEL: {"input": "1", "output": "2"}})
    for key in (unpriced_key, unpriced_key, priced_key):
        chat(base, key)
    ledgered_usage(base, unpriced_key, 2)  # the pages read the ledger, which the journal feeds every 0.5 s
    ledgered_usage(base, priced_key, 1)

    page = signed_in(browser, base, unpriced_key, viewport={"width": 1100, "height": 900})
    check_day_charts(page)
    assert MODEL in page.locator("#cost-note").inner_text()  # no price for its model: said, and no $0 chart
    assert page.locator("#chart-cost canvas").count() == 0
    assert "no price" in page.locator("#chart-cost").inner_text()
    assert page.locator("#by-key tbody tr").first.locator("td").nth(1).inner_text().startswith("first · ")
    page.close()

    page = signed_in(browser, base, priced_key, viewport={"width": 1100, "height": 900})
    check_day_charts(page)
    assert page.locator("#cost-note").count() == 0
    assert page.locator("#chart-cost canvas").count() == 1
    page.close()

    page = signed_in(browser, base, ADMIN_KEY, viewport={"width": 1100, "height": 900})
    page.click("nav >> text=Usage")
    check_day_charts(page)
    assert page.locator("#chart-cost canvas").count() == 1  # one tenant pays
    assert MODEL in page.locator("#cost-note").inner_text()  # the other is billed nothing for it
    with page.expect_download() as download:
        page.click("text=Download CSV")
    assert "free-" in Path(download.value.path()).read_text()

    page.click("nav >> text=Service")
    page.wait_for_selector("#windows tbody tr")
    page.wait_for_function("document.querySelector('#latency-chart').dataset.xTicks")
    ticks = page.locator("#latency-chart").get_attribute("data-x-ticks").split("|")
    assert len(ticks) >= 3 and all(CLOCK_TICK.fullmatch(tick) for tick in ticks), ticks
    windows = page.locator("#windows tbody tr")
    assert [windows.nth(i).locator("td").first.inner_text() for i in range(3)] == ["1 min", "5 min", "15 min"]
    assert int(windows.last.locator("td").nth(2).inner_text()) >= 3  # answered, this test's three at least
    page.close()
