"""Browsers calling the API from a page on another origin (a chat front end's direct connection): CORS for the
origins in ``LLMAAS_CORS_ORIGINS`` only, preflights answered before authentication, and a chat completion
streamed into a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright). The instant
fake engine stands in for vLLM: what is tested here is the browser's side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from tests.support import MODEL
from tests.support.gateway_process import fake_gateway
from tests.support.static_server import serving
from tests.support.tenants import tenant_key

PAGE = """<!doctype html><meta charset="utf-8"><title>chat</title><pre id="out"></pre>
<script>
async function chat(base, key) {
  const response = await fetch(base + "/v1/chat/completions", {
    method: "POST",
    headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json", "X-Stainless-Lang": "js"},
    body: JSON.stringify({model: "%MODEL%", messages: [{role: "user", content: "hi"}], max_tokens: 9,
                          stream: true, stream_options: {include_usage: true}}),
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "", buffer = "", usage = null, chunks = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\\n\\n")) >= 0) {
      const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const chunk = JSON.parse(event.slice(6));
      chunks += 1;
      for (const choice of chunk.choices) text += choice.delta.content || "";
      if (chunk.usage) usage = chunk.usage;
    }
  }
  return {text, usage, chunks, requestId: response.headers.get("x-request-id")};
}
</script>"""


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[str, str]]:
    """Two web apps, each on an origin of its own: one whose origin the gateway allows, one it does not."""
    page = PAGE.replace("%MODEL%", MODEL).encode()
    with serving(page, "text/html; charset=utf-8") as allowed, serving(page, "text/html; charset=utf-8") as other:
        yield allowed.url, other.url


@pytest.fixture(scope="module")
def gateway(pages: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A gateway that allows the first page's origin, and a tenant key."""
    with fake_gateway(tmp_path_factory.mktemp("cors"), cors_origins=f"https://chat.example.com, {pages[0]}") as running:
        yield running.base, tenant_key(running.base, "web")[1]


def preflight(base: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base}/v1/chat/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-stainless-lang",
        },
    )


def test_a_preflight_from_an_allowed_origin_is_answered_before_authentication(
    gateway: tuple[str, str], pages: tuple[str, str]
) -> None:
    base, key = gateway
    allowed = preflight(base, pages[0])
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == pages[0]
    assert {"authorization", "content-type"} <= set(allowed.headers["access-control-allow-headers"].split(","))
    assert "POST" in allowed.headers["access-control-allow-methods"]
    refused = preflight(base, pages[1])
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    reply = httpx.get(f"{base}/v1/models", headers={"origin": pages[0], "authorization": f"Bearer {key}"})
    assert reply.headers["access-control-allow-origin"] == pages[0]
    assert "x-request-id" in reply.headers["access-control-expose-headers"]
    unauthenticated = httpx.get(f"{base}/v1/models", headers={"origin": pages[0]})
    assert unauthenticated.status_code == 401  # CORS opens the door to browsers, not to requests without a key
    assert unauthenticated.headers["access-control-allow-origin"] == pages[0]  # so the page can read the error


def test_without_the_setting_no_origin_is_allowed(tmp_path: Path) -> None:
    with fake_gateway(tmp_path) as running:
        answer = preflight(running.base, "https://chat.example.com")
        assert "access-control-allow-origin" not in answer.headers


def test_a_page_on_another_origin_streams_a_chat_completion_in_chromium(
    gateway: tuple[str, str], pages: tuple[str, str], browser: Browser
) -> None:
    base, key = gateway
    page = browser.new_page()
    page.goto(pages[0])
    result = page.evaluate("([base, key]) => chat(base, key)", [base, key])
    assert result["text"] == "The quick"  # the fake engine's 9 tokens, one per chunk
    assert result["chunks"] >= 9 and result["usage"]["completion_tokens"] == 9
    assert result["requestId"].startswith("req_")  # an exposed header
    page.goto(pages[1])
    blocked = page.evaluate("([base, key]) => chat(base, key).then(() => 'read', e => e.name)", [base, key])
    assert blocked == "TypeError"  # the browser refused the answer to a page the gateway does not allow
    page.close()
