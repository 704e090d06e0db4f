"""Pages that teach: what a new tenant's console says before there is anything to show, in a real headless Chromium
against a gateway process (the instant fake engine stands in for vLLM). Each API call a page offers to copy is sent
as written and works; the sample training files upload and start jobs (chat and DPO); a job cancelled before its
first step says so instead of an empty chart; the playground keeps a conversation and says why an answer stopped;
sign-out says so on the sign-in page; ``/favicon.ico`` is an icon."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from gateway.routes.console import STATIC_DIR
from gateway.routes.console.examples import EVAL_ID, FILE_ID, SAMPLES, examples
from tests.support import MODEL
from tests.support.console import signed_in
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import openai_client, tenant_key


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("teaching")) as running:
        yield running.base


def test_every_call_a_page_teaches_works_as_written(base: str) -> None:
    """The calls, sent as their curl commands say (the same method, path, JSON body or form), in the order a
    newcomer would (a key manager's key: aliases need one): each one answered 2xx, the ids the next one needs
    taken from the answers."""
    _, key = tenant_key(base, key={"key_manager": True})
    calls = examples(MODEL)
    ids = {FILE_ID: "", EVAL_ID: ""}
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}) as http:
        for name in ("chat", "upload", "job", "eval", "run", "alias"):
            call = calls[name]
            path, body = call.path, json.dumps(call.body)
            for placeholder, value in ids.items():
                path, body = path.replace(placeholder, value), body.replace(placeholder, value)
            if call.form:
                fields = dict(call.form)
                sample = (STATIC_DIR / "samples" / fields.pop("file").removeprefix("@")).read_bytes()
                answer = http.request(call.method, path, data=fields, files={"file": ("sample.jsonl", sample)})
            else:
                answer = http.request(call.method, path, content=body, headers={"content-type": "application/json"})
            assert answer.is_success, (name, answer.text)
            ids[FILE_ID] = answer.json()["id"] if name == "upload" else ids[FILE_ID]
            ids[EVAL_ID] = answer.json()["id"] if name == "eval" else ids[EVAL_ID]
        assert "curl" in calls["chat"].curl(base) and f"{base}/v1/chat/completions" in calls["chat"].curl(base)


def test_the_sample_training_files_upload_and_start_jobs(base: str) -> None:
    _, key = tenant_key(base)
    client = openai_client(base, key)
    chat, dpo = (client.files.create(file=(name, (STATIC_DIR / "samples" / name).read_bytes()), purpose="fine-tune")
                 for name in SAMPLES)  # fmt: skip
    supervised = client.fine_tuning.jobs.create(model=MODEL, training_file=chat.id)
    preference = client.fine_tuning.jobs.create(
        model=MODEL, training_file=dpo.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}
    )
    assert (supervised.method.type, preference.method.type) == ("supervised", "dpo")  # type: ignore[union-attr]
    for job in (supervised, preference):
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def shown(page: Page, selector: str) -> bool:
    return page.locator(selector).is_visible()


def test_a_new_tenants_pages_say_what_to_do_next(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    client = openai_client(base, key)
    page = signed_in(browser, base, key, viewport={"width": 1000, "height": 900})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    assert shown(page, "#usage-empty") and "/v1/chat/completions" in page.locator("#usage-empty-call").inner_text()

    page.goto(f"{base}/console/evaluations")
    page.wait_for_selector("body[data-ready='true']")
    assert shown(page, "#eval-empty") and not shown(page, "#eval-picker") and not shown(page, "#accuracy-chart")
    page.click("#eval-empty button.copy")
    page.wait_for_selector("#eval-empty button.copy:text('Copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#eval-empty-call").inner_text() and copied.startswith(f"curl {base}/v1/evals")
    created = client.evals.create(**examples(MODEL)["eval"].body)  # type: ignore[arg-type]
    page.reload()
    page.wait_for_selector("body[data-runs-shown='0']")
    assert shown(page, "#runs-empty") and not shown(page, "#accuracy-chart")
    assert f"/v1/evals/{created.id}/runs" in page.locator("#runs-empty-call").inner_text()

    page.goto(f"{base}/console/fine-tuning")
    page.wait_for_selector("body[data-ready='true']")
    assert shown(page, "#jobs-empty") and '"messages"' in page.locator("#format-sft").inner_text()
    with page.expect_download() as download:
        page.click("text=Download a sample (8 lines)")
    assert Path(download.value.path()).read_bytes() == (STATIC_DIR / "samples" / SAMPLES[0]).read_bytes()
    upload = client.files.create(
        file=("s.jsonl", (STATIC_DIR / "samples" / SAMPLES[0]).read_bytes()), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload.id)  # no worker runs here: it waits
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    page.click(f"text={job.id}")
    page.wait_for_selector("body[data-job-status='cancelled']")
    assert "cancelled before its first training step" in page.locator("#no-steps").inner_text()
    assert not shown(page, "#loss-chart") and "No training steps yet" not in page.locator("#job").inner_text()

    page.goto(f"{base}/console/models")
    page.wait_for_selector("body[data-models-loaded='true']")
    assert shown(page, "#models-empty")
    page.click("#models-empty >> text=Start a fine-tuning job")
    page.wait_for_url("**/console/fine-tuning")
    page.goto(f"{base}/console/aliases")
    page.wait_for_selector("body[data-aliases-loaded='true']")
    assert shown(page, "#aliases-empty") and '"production"' in page.locator("#aliases-empty-call").inner_text()

    page.click("text=Sign out")
    page.wait_for_url("**/console/login?signed_out")
    assert "You are signed out" in page.locator(".notice").inner_text()
    page.close()


def test_the_playground_keeps_the_conversation_and_says_why_it_stopped(base: str, browser: Browser) -> None:
    _, key = tenant_key(base)
    page = signed_in(browser, base, key, viewport={"width": 1000, "height": 800})
    page.goto(f"{base}/console/playground")
    page.wait_for_selector("body[data-models-loaded='true']")
    sent: list[dict[str, Any]] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)

    def say(text: str) -> None:
        page.fill("#prompt", text)
        page.click("#send")
        page.wait_for_selector("body[data-answered='true']")
        assert page.locator("#error").inner_text() == ""

    page.fill("#max-tokens", "9")
    say("Hello there.")
    finish = page.locator("#finish").inner_text()
    assert finish.startswith("finish_reason: length") and "max tokens" in finish  # the fake engine's 9 tokens
    say("And then?")
    assert [m["role"] for m in sent[-1]["messages"]] == ["user", "assistant", "user"]
    assert sent[-1]["messages"][1]["content"] == "The quick"  # the first answer, carried back to the model
    turns = page.locator("#conversation li").all_inner_texts()
    assert len(turns) == 3 and re.search("you\\s+Hello there.", turns[0]) and turns[2].endswith("And then?")
    page.click("#new-conversation")
    assert page.locator("#conversation li").count() == 0
    say("Fresh start.")
    assert [m["role"] for m in sent[-1]["messages"]] == ["user"]
    page.close()


def test_the_favicon_is_an_icon(base: str) -> None:
    icon = httpx.get(f"{base}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO
