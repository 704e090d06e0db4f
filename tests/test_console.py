"""The web console in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright), against a
gateway process (the instant fake engine stands in for vLLM: the console is what is tested): signing in with a
tenant's key or the admin key and out, usage appearing after API requests (tables and charts), keys created
(shown once, working) and revoked (refused at once), the session cookie out of the page's reach, CSRF, and
tenants kept from each other's pages and from the operator's; the playground's tool call once on the real engine
(the suite's ``server``). The screenshots the docs show are made by ``bench/console_screenshots.py``."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Route

from tests.finetune_data import pirate_jsonl
from tests.support import ADMIN, ADMIN_KEY, MODEL, REPO
from tests.support.console import confirm, cookies_of, sign_in, signed_in
from tests.support.evals import ITEMS, completions_source, finished, make_eval
from tests.support.gateway_process import CLI, fake_gateway, gateway_env
from tests.support.tenants import ledgered_usage, tenant_key


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def base(data_dir: Path) -> Iterator[str]:
    with fake_gateway(data_dir) as running:
        yield running.base


def chat(base: str, key: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def test_a_tenant_signs_in_sees_its_usage_and_signs_out(base: str, browser: Browser) -> None:
    _, key = tenant_key(
        base, monthly_token_budget=2000, monthly_cost_budget="5", model_prices={MODEL: {"input": "1", "output": "2"}}
    )
    for _ in range(3):
        assert chat(base, key).status_code == 200
    ledgered_usage(base, key, 3)
    page = signed_in(browser, base, key, viewport={"width": 1100, "height": 900})
    row = page.locator("#by-model tbody tr").first
    assert row.locator("td").nth(1).inner_text() == MODEL
    assert row.locator("td").nth(2).inner_text() == "3"  # the three requests, from the ledger
    page.wait_for_selector("body[data-charts-drawn='true']")
    for chart in ("daily", "cumulative", "cost"):
        assert page.locator(f"#chart-{chart} canvas").count() == 1
    assert "llmaas_console" not in page.evaluate("document.cookie")  # HttpOnly: no script reads the session
    with page.expect_download() as download:
        page.click("text=Download CSV")
    assert MODEL in Path(download.value.path()).read_text()
    page.click("text=Sign out")
    page.wait_for_url("**/console/login?signed_out")
    page.goto(f"{base}/console/usage")
    assert page.url.endswith("/console/login")  # the session is gone
    page.close()


def test_a_wrong_key_is_refused_with_a_message(base: str, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, base, "sk-not-a-key-0123456789")
    assert "Incorrect API key" in page.locator(".error").inner_text()
    assert page.context.cookies() == []
    page.close()


def test_keys_are_created_once_shown_and_revoked(base: str, browser: Browser) -> None:
    _, key = tenant_key(base, key={"key_manager": True})
    page = browser.new_page(viewport={"width": 390, "height": 844})  # phone width
    sign_in(page, base, key)
    page.goto(f"{base}/console/keys")
    page.fill("#name", "ci")
    page.click("text=Create key")
    new_key = page.locator("#new-key").inner_text()
    assert new_key.startswith("sk-") and chat(base, new_key).status_code == 200
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    page.goto(f"{base}/console/keys")
    assert page.locator("#new-key").count() == 0  # shown once
    row = page.locator("#keys tbody tr", has_text="ci")
    row.locator("text=Revoke").click()
    assert "refused at once" in page.locator("#confirm-message").inner_text()  # asked first
    confirm(page)
    page.locator("#keys tbody tr", has_text="ci").locator("td.status-revoked").wait_for()  # the page reloaded
    assert page.locator("#keys tbody tr", has_text="ci").locator("td").nth(2).inner_text() == "revoked"
    assert chat(base, new_key).status_code == 401  # refused at once, on this gateway
    page.close()


def test_forms_need_the_sessions_csrf_token_and_sign_in_its_own_page(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    page = signed_in(browser, base, key)
    cookies = cookies_of(page)
    with httpx.Client(base_url=base, cookies=cookies) as http:
        assert http.post("/console/keys", data={"name": "forged"}).status_code == 403
        assert http.post("/console/keys", data={"name": "forged", "csrf": "guess"}).status_code == 403
        assert http.get("/console/keys").status_code == 200
    cross_site = httpx.post(f"{base}/console/login", data={"key": key}, headers={"sec-fetch-site": "cross-site"})
    assert cross_site.status_code == 403 and "set-cookie" not in cross_site.headers
    page.close()


def test_tenants_see_only_their_own_pages(base: str, browser: Browser) -> None:
    _, key_a = tenant_key(base)
    tenant_b, key_b = tenant_key(base)
    b_keys = httpx.get(f"{base}/admin/v1/tenants/{tenant_b}/keys", headers=ADMIN).json()["data"]
    page = signed_in(browser, base, key_a)
    page.goto(f"{base}/console/keys")
    shown = page.locator("#keys tbody").inner_text()
    assert all(k["prefix"] not in shown for k in b_keys)
    cookies = cookies_of(page)
    with httpx.Client(base_url=base, cookies=cookies) as http:
        refused = http.get("/console/admin/tenants")
        assert refused.status_code == 403 and "needs the admin key" in refused.text  # a page saying why
        assert refused.headers["content-type"].startswith("text/html")
        csrf_page = http.get("/console/keys").text
        csrf = csrf_page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        revoke = http.post(f"/console/keys/{b_keys[0]['id']}/revoke", data={"csrf": csrf})
        assert revoke.status_code == 404  # another tenant's key is as absent as a missing one
    assert chat(base, key_b).status_code == 200
    page.close()


def test_a_revoked_key_ends_its_session(base: str, browser: Browser) -> None:
    tenant_id, key = tenant_key(base)
    page = signed_in(browser, base, key)
    key_id = httpx.get(f"{base}/admin/v1/tenants/{tenant_id}/keys", headers=ADMIN).json()["data"][0]["id"]
    assert httpx.delete(f"{base}/admin/v1/tenants/{tenant_id}/keys/{key_id}", headers=ADMIN).status_code == 200
    page.goto(f"{base}/console/usage")
    assert page.url.endswith("/console/login")
    page.close()


def test_the_operator_signs_in_with_the_admin_key(base: str, browser: Browser) -> None:
    tenant_key(base, requests_per_minute=60)
    page = signed_in(browser, base, ADMIN_KEY, viewport={"width": 1100, "height": 700})
    assert page.locator("#tenants tbody tr").count() >= 1
    page.click("#tenants th:has-text('RPM')")  # sortable
    assert page.locator("#tenants th:has-text('RPM')").get_attribute("aria-sort") == "ascending"
    cookies = cookies_of(page)
    assert httpx.get(f"{base}/console/usage", cookies=cookies).status_code == 403  # a tenant's page
    page.close()


def test_the_operator_reads_the_audit_log(base: str, browser: Browser) -> None:
    tenant_id, _ = tenant_key(base)
    httpx.post(f"{base}/admin/v1/tenants/{tenant_id}/suspend", headers=ADMIN)
    page = signed_in(browser, base, ADMIN_KEY, viewport={"width": 1100, "height": 700})
    page.click("text=Audit log")
    page.wait_for_url("**/console/admin/audit")
    page.fill("input[name=tenant]", tenant_id)
    page.click("#audit-filters button")
    page.wait_for_url("**/console/admin/audit?*")
    actions = page.locator("#audit tbody tr td:nth-child(3)").all_inner_texts()
    assert actions == ["tenant.suspend", "key.create", "tenant.create"]
    page.close()


def test_the_playground_streams_an_answer_and_shows_its_usage(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    page = signed_in(browser, base, key, viewport={"width": 1000, "height": 700})
    page.click("text=Playground")
    page.wait_for_selector("body[data-models-loaded='true']")
    assert MODEL in page.locator("#model").inner_text()
    page.fill("#prompt", "Say something.")
    page.fill("#max-tokens", "9")
    page.click("#send")
    page.wait_for_selector("body[data-answered='true']")
    assert page.locator("#error").inner_text() == ""
    assert page.locator("#answer").inner_text() == "The quick"  # the fake engine's first 9 tokens, streamed
    assert "+ 9 completion" in page.locator("#usage").inner_text()
    usage = ledgered_usage(base, key, 1)
    assert usage["totals"]["completion_tokens"] == 9  # metered like any API request, on the session's key
    page.close()


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def sse(*chunks: dict[str, Any]) -> str:
    """A chat completion stream in OpenAI's chunk shape, ending ``[DONE]``."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    return "".join(f"data: {json.dumps({**head, **chunk})}\n\n" for chunk in chunks) + "data: [DONE]\n\n"


def delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


TOOL_CALL_STREAM = sse(
    delta({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                "function": {"name": "get_weather", "arguments": ""}}]}),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
    delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    delta({}, "tool_calls"),
    {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}},
)  # fmt: skip
JSON_STREAM = sse(delta({"role": "assistant", "content": '{"city": '}), delta({"content": '"Paris"}'}, "stop"))


def test_the_playground_asks_for_json_and_tools_and_shows_the_tool_calls(base: str, browser: Browser) -> None:
    """The page's requests, taken by Playwright before they leave the browser, and answered with OpenAI's
    chunks (a tool call's arguments streamed in pieces): what the page sends, and what it shows."""
    _, key = tenant_key(base)
    page = signed_in(browser, base, key)
    page.goto(f"{base}/console/playground")
    page.wait_for_selector("body[data-models-loaded='true']")
    sent: list[dict[str, Any]] = []

    def answer(route: Route) -> None:
        sent.append(route.request.post_data_json)
        stream = TOOL_CALL_STREAM if "tools" in sent[-1] else JSON_STREAM
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=stream)

    page.route("**/console/api/v1/chat/completions", answer)

    def send() -> None:
        page.click("#send")
        page.wait_for_selector("body[data-answered='true']")

    page.fill("#prompt", "What is the weather in Paris?")
    assert page.locator("#schema").is_hidden()
    page.select_option("#format", "json_schema")
    page.fill("#schema", "{not json")
    send()
    assert "not valid JSON" in page.locator("#error").inner_text() and sent == []  # refused on the page
    page.fill("#schema", json.dumps(WEATHER_SCHEMA))
    page.select_option("#tools", "required")
    send()
    body = sent[-1]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "playground", "schema": WEATHER_SCHEMA, "strict": True},
    }
    assert body["tool_choice"] == "required" and [tool["function"]["name"] for tool in body["tools"]] == ["get_weather"]
    assert body["parallel_tool_calls"] is False
    assert body["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert body["stream"] is True and body["messages"][-1]["content"] == "What is the weather in Paris?"
    assert page.locator("#error").inner_text() == ""
    assert page.locator(".tool-name").all_inner_texts() == ["get_weather"]
    assert page.locator(".tool-arguments").all_inner_texts() == ['{"city": "Paris"}']
    assert "tool_calls" in page.locator("#finish").inner_text()
    assert "+ 8 completion" in page.locator("#usage").inner_text()

    page.select_option("#format", "json_object")
    page.select_option("#tools", "none")
    send()
    body = sent[-1]
    assert body["response_format"] == {"type": "json_object"} and "tools" not in body and "tool_choice" not in body
    assert page.locator("#answer").inner_text() == '{"city": "Paris"}'
    assert page.locator("#tool-calls").is_hidden() and "stop" in page.locator("#finish").inner_text()
    page.close()


def test_the_playground_shows_the_real_models_tool_call(server: str, browser: Browser) -> None:
    """On the real engine (the suite's ``llmaas serve``): a required tool choice is enforced by structured
    decoding, so the model's call is always to ``get_weather`` with arguments that parse."""
    _, key = tenant_key(server)
    page = signed_in(browser, server, key, viewport={"width": 1000, "height": 700})
    page.goto(f"{server}/console/playground")
    page.wait_for_selector("body[data-models-loaded='true']")
    page.fill("#prompt", "What is the weather in Paris?")
    page.select_option("#tools", "required")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "80")
    page.click("#send")
    page.wait_for_selector("body[data-answered='true']", timeout=300_000)  # seconds when the machine is not shared
    assert page.locator("#error").inner_text() == ""
    assert set(page.locator(".tool-name").all_inner_texts()) == {"get_weather"}
    for arguments in page.locator(".tool-arguments").all_inner_texts():
        assert isinstance(json.loads(arguments)["city"], str)
    assert page.locator("#finish").inner_text().startswith("finish_reason: tool_calls")
    page.close()


def test_the_console_api_bridge_needs_the_session_and_its_csrf_token(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    page = signed_in(browser, base, key)
    tenant_cookies = cookies_of(page)
    page.goto(f"{base}/console/playground")
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    page.close()
    operator_page = signed_in(browser, base, ADMIN_KEY)
    operator_cookies = cookies_of(operator_page)
    operator_csrf = operator_page.locator("input[name=csrf]").first.get_attribute("value")
    operator_page.close()
    bridge = f"{base}/console/api"
    assert httpx.get(f"{bridge}/v1/models").status_code == 401
    assert httpx.get(f"{bridge}/v1/models", cookies=tenant_cookies).status_code == 403  # no CSRF header
    with httpx.Client(cookies=tenant_cookies, headers={"x-csrf-token": csrf or ""}) as http:
        assert http.get(f"{bridge}/v1/models").json()["data"][0]["id"] == MODEL
        assert http.get(f"{bridge}/admin/v1/tenants").status_code == 403
        assert http.get(f"{bridge}/metrics").status_code == 403
    with httpx.Client(cookies=operator_cookies, headers={"x-csrf-token": operator_csrf or ""}) as http:
        assert http.get(f"{bridge}/admin/v1/tenants").status_code == 200
        assert http.get(f"{bridge}/v1/models").status_code == 403
        mixed = http.get(f"{bridge}/v1/models", headers={"x-csrf-token": csrf or ""})
        assert mixed.status_code == 403  # one session's token does not pass for another's


def test_a_fine_tuning_job_is_started_and_its_loss_curve_drawn(
    base: str, data_dir: Path, browser: Browser, model_dir: Path, tmp_path: Path
) -> None:
    """A worker trains the real model beside the gateway (on its database); the page follows the job live."""
    _, key = tenant_key(base)
    bad, good = tmp_path / "bad.jsonl", tmp_path / "pirate.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    good.write_bytes(pirate_jsonl())
    env = gateway_env(data_dir, admin_key=None, model_path=model_dir)
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen([*CLI, "worker"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        page = signed_in(browser, base, key, viewport={"width": 1100, "height": 1000})
        page.click("text=Fine-tuning")
        page.wait_for_selector("body[data-ready='true']")
        page.set_input_files("#file", str(bad))
        page.click("#upload button")
        page.wait_for_selector("#upload-result.error")
        assert "Invalid file format" in page.locator("#upload-result").inner_text()  # the validation result
        page.set_input_files("#file", str(good))
        page.click("#upload button")
        page.wait_for_selector("#upload-result:not(.error):has-text('valid')")
        page.fill("#epochs", "3")
        page.click("#start button")
        page.wait_for_selector("#job:not([hidden])")
        page.wait_for_selector("body[data-job-status='succeeded']", timeout=240_000)
        assert int(page.locator("body").get_attribute("data-loss-points") or 0) >= 3
        assert page.locator("#loss-chart canvas").count() == 1  # the loss curve, drawn from the job's events
        assert page.locator("#checkpoints tbody tr").count() >= 1
        assert page.locator("#jobs tbody tr").first.locator("td").nth(3).inner_text().startswith("ft:")
        page.fill("#epochs", "50")  # a long job, cancelled while it trains
        page.click("#start button")
        page.wait_for_selector("body[data-job-status='running']", timeout=120_000)
        page.click("#cancel")
        confirm(page)
        page.wait_for_selector("body[data-job-status='cancelled']", timeout=60_000)
        tuned = page.locator("#jobs tbody tr td:nth-child(4):has-text('ft:')").first.inner_text()
        page.click("text=Models")
        page.wait_for_selector("body[data-models-loaded='true']")
        assert page.locator(f"#models tbody tr[data-model='{tuned}']").count() == 1
        page.locator(f"#models tbody tr[data-model='{tuned}'] button").click()
        confirm(page)
        page.wait_for_selector(f"#models tbody tr[data-model='{tuned}']", state="detached")
        gone = httpx.get(f"{base}/v1/models/{tuned}", headers={"authorization": f"Bearer {key}"})
        assert gone.status_code == 404
        page.close()
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_the_operator_creates_a_tenant_sets_its_quotas_and_suspends_it(base: str, browser: Browser) -> None:
    page = signed_in(browser, base, ADMIN_KEY, viewport={"width": 1100, "height": 800})
    name = f"made-{uuid.uuid4().hex[:6]}"
    page.fill("#tenant-name", name)
    page.fill("#new-rpm", "30")
    page.click("#create-tenant button")
    page.wait_for_url("**/console/admin/tenants/ten_*")  # on to the new tenant's page
    page.goto(f"{base}/console/admin/tenants")
    row = page.locator(f"#tenants tbody tr[data-name='{name}']")
    row.wait_for()
    assert row.locator("[data-field=requests_per_minute]").inner_text() == "30"
    row.locator(".edit").click()
    page.fill("#quota-form input[name=monthly_token_budget]", "5000")
    page.fill("#quota-form input[name=requests_per_minute]", "")
    page.click("#quota-form button[value=save]")
    row = page.locator(f"#tenants tbody tr[data-name='{name}']")
    row.locator("[data-field=monthly_token_budget]:text-is('5000')").wait_for()  # the page reloaded
    assert row.locator("[data-field=monthly_token_budget]").inner_text() == "5000"
    assert row.locator("[data-field=requests_per_minute]").inner_text() == "\u2013"  # emptied: unlimited (a dash)
    tenant_id = row.get_attribute("data-tenant-id")
    key = httpx.post(f"{base}/admin/v1/tenants/{tenant_id}/keys", json={}, headers=ADMIN).json()["key"]
    assert chat(base, key).status_code == 200
    row.locator(".suspend").click()
    page.locator("#confirm button[value=no]").click()  # kept: nothing happened
    assert chat(base, key).status_code == 200
    row.locator(".suspend").click()
    confirm(page)
    page.wait_for_selector(f"#tenants tbody tr[data-name='{name}'] .resume")
    assert chat(base, key).status_code == 403  # what the admin API says, the page did
    page.locator(f"#tenants tbody tr[data-name='{name}'] .resume").click()
    page.wait_for_selector(f"#tenants tbody tr[data-name='{name}'] .suspend")
    assert chat(base, key).status_code == 200
    page.close()


def test_the_operator_sees_every_tenants_usage_the_service_and_the_queue(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    for _ in range(2):
        assert chat(base, key).status_code == 200
    tuner = httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"})
    training_file = tuner.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("p.jsonl", pirate_jsonl())})
    job = tuner.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": training_file.json()["id"]}).json()
    try:
        page = signed_in(browser, base, ADMIN_KEY, viewport={"width": 1100, "height": 900})
        page.click("nav >> text=Service")
        page.wait_for_selector("body[data-refreshed]")
        last_minutes = page.locator("#windows tbody tr")  # the last 1, 5 and 15 minutes
        assert int(last_minutes.last.locator("td").nth(1).inner_text()) >= 2
        assert last_minutes.last.locator("td").nth(6).inner_text().endswith("ms")
        assert page.locator("#latency-chart canvas").count() == 1
        assert page.locator("#queue tbody tr", has_text=job["id"]).count() == 1  # queued: no worker runs here
        page.click("nav >> text=Usage")
        assert page.locator("#all-usage tbody tr").count() >= 1
        cookies = cookies_of(page)
        assert httpx.get(f"{base}/console/admin/service.json", cookies=cookies).status_code == 200
        page.close()
        tenant_page = signed_in(browser, base, key)
        tenant_cookies = cookies_of(tenant_page)
        assert httpx.get(f"{base}/console/admin/service.json", cookies=tenant_cookies).status_code == 403
        assert httpx.get(f"{base}/console/admin/usage", cookies=tenant_cookies).status_code == 403
        tenant_page.close()
    finally:
        tuner.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        tuner.close()


def test_evaluation_runs_are_shown_side_by_side_with_their_accuracy(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    created = make_eval(client)
    content = [{"item": item} for item in ITEMS]
    runs = [
        client.evals.runs.create(
            created.id, name=name, data_source=completions_source({"type": "file_content", "content": content}, tokens)
        )
        for name, tokens in (("nine tokens", 9), ("three tokens", 3))
    ]
    done = [finished(client, created.id, run.id) for run in runs]
    assert all(run.status == "completed" for run in done)
    page = signed_in(browser, base, key, viewport={"width": 1100, "height": 800})
    page.click("text=Evaluations")
    page.wait_for_selector("body[data-runs-shown='2']")
    rows = page.locator("#runs tbody tr")
    for index, run in enumerate(done):
        accuracy = 100 * run.result_counts.passed / run.result_counts.total
        assert rows.nth(index).locator("td").nth(3).inner_text() == f"{accuracy:.1f} %"
    assert page.locator("#accuracy-chart canvas").count() == 1
    page.close()


def test_every_page_fits_a_phone(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    assert chat(base, key).status_code == 200
    for credential, pages in (
        (key, ["usage", "keys", "models", "aliases", "fine-tuning", "evaluations", "playground"]),
        (ADMIN_KEY, ["admin/tenants", "admin/usage", "admin/aliases", "admin/service", "admin/audit"]),
    ):
        page = browser.new_page(viewport={"width": 390, "height": 844})
        sign_in(page, base, credential)
        page.wait_for_load_state()
        for name in pages:
            page.goto(f"{base}/console/{name}")
            page.wait_for_load_state("networkidle")
            assert page.url.endswith(f"/console/{name}")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, name  # wide tables scroll inside
        page.close()
