"""Models listing, health/readiness (with the dtype and thread layout chosen for this machine), Prometheus metrics,
and aborting generation when a client leaves."""

from __future__ import annotations

import time

import httpx
import openai
import psutil

from engine.hardware import choose_layout, detect, resolve_dtype
from engine.settings import DEFAULT_EMBEDDING_MODEL_ID
from tests.support import MODEL
from tests.support.metrics import metric_value


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, DEFAULT_EMBEDDING_MODEL_ID]  # the chat model, the embedding model
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.object == "model"
    assert model.owned_by == "llmaas"


def test_health_and_ready(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == [MODEL, DEFAULT_EMBEDDING_MODEL_ID]  # the chat model, the embedding model
    engine = ready.json()["engines"][MODEL]  # the dtype it serves (the suite's server asks for fp32), and the machine
    assert engine["dtype"] == resolve_dtype("float32", detect())
    assert detect().isa in engine["hardware"]
    assert engine["threads"] == choose_layout(detect(), None, None).describe(detect().cores)


def test_the_engine_runs_in_the_processes_its_layout_says(server: str) -> None:
    """The layout is not just reported: on a small machine vLLM's engine core runs the model itself (no worker
    process beside it); on a larger one a worker process does."""
    port = server.rsplit(":", 1)[1]
    gateway = next(
        proc
        for proc in psutil.process_iter(["cmdline"])
        if "gateway.cli" in (cmdline := proc.info["cmdline"] or []) and port in cmdline
    )
    titles = [" ".join(child.cmdline()) for child in gateway.children(recursive=True)]
    assert any("EngineCore" in title for title in titles), titles
    has_worker = any("Worker" in title for title in titles)
    assert has_worker == choose_layout(detect(), None, None).worker_process, titles


def test_metrics_count_requests_tokens_and_latency(client: openai.OpenAI, admin: httpx.Client) -> None:
    before = admin.get("/metrics").text
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0
    )
    after = admin.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    route = {"route": "/v1/chat/completions"}

    def delta(name: str, **labels: str) -> float:
        return metric_value(text, name, **labels) - metric_value(before, name, **labels)

    assert delta("llmaas_http_requests_total", status="200", **route) == 1
    assert delta("llmaas_http_request_duration_seconds_count", **route) == 1
    assert delta("llmaas_prompt_tokens_total", model=MODEL) == reply.usage.prompt_tokens
    assert delta("llmaas_completion_tokens_total", model=MODEL) == reply.usage.completion_tokens
    assert delta("llmaas_time_to_first_token_seconds_count", model=MODEL) == 1
    for gauge in ("llmaas_engine_requests_running", "llmaas_engine_requests_waiting", "llmaas_engine_kv_cache_usage"):
        assert f"\n{gauge} " in text


def _wait_engine_idle(admin: httpx.Client, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = admin.get("/metrics").text
        if metric_value(text, "llmaas_engine_requests_unfinished") == 0:
            return text
        time.sleep(0.1)
    raise AssertionError("the engine still holds the request after the client left")


def test_client_disconnect_mid_stream_aborts_generation(server: str, admin: httpx.Client, api_key: str) -> None:
    before = admin.get("/metrics").text
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    auth = {"authorization": f"Bearer {api_key}"}
    with (
        httpx.Client(base_url=server, timeout=60, headers=auth) as own,
        own.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        content_chunks = 0
        for line in lines:
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                content_chunks += 1
                if content_chunks == 3:
                    break
        # Leaving the block closes the connection mid-stream.
        running = metric_value(admin.get("/metrics").text, "llmaas_engine_requests_unfinished")
        assert running == 1
    after = _wait_engine_idle(admin)
    aborted = metric_value(after, "llmaas_generations_total", outcome="aborted") - metric_value(
        before, "llmaas_generations_total", outcome="aborted"
    )
    assert aborted == 1
    generated = metric_value(after, "llmaas_completion_tokens_total") - metric_value(
        before, "llmaas_completion_tokens_total"
    )
    assert 0 < generated < 1500
    # The engine is free: a new request is served at once.
    time.sleep(1)
    assert metric_value(admin.get("/metrics").text, "llmaas_completion_tokens_total") == metric_value(
        after, "llmaas_completion_tokens_total"
    )


def test_client_disconnect_while_waiting_for_a_non_stream_reply_aborts(
    server: str, admin: httpx.Client, api_key: str
) -> None:
    before = admin.get("/metrics").text
    body = {
        "model": MODEL,
        "prompt": "Rivers are",
        "max_tokens": 1500,
        "ignore_eos": True,
    }
    try:
        httpx.post(f"{server}/v1/completions", json=body, timeout=1.5, headers={"authorization": f"Bearer {api_key}"})
        raise AssertionError("1500 tokens cannot be generated within 1.5 s here")
    except httpx.ReadTimeout:
        pass
    after = _wait_engine_idle(admin)
    aborted = metric_value(after, "llmaas_generations_total", outcome="aborted") - metric_value(
        before, "llmaas_generations_total", outcome="aborted"
    )
    assert aborted == 1
