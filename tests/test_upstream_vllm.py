"""The upstream backend end to end, with real processes only: two CPU vLLM OpenAI servers (LoRA enabled,
runtime adapter loading on), two ``llmaas serve`` gateways in front of both, one PostgreSQL, one Redis, and the
first gateway's fine-tuning worker. Through the official client: chat, completions and streams on both
replicas; a model fine-tuned through our API answered by each replica in turn; limits and budgets exact
across the two gateways; a replica killed under load (requests that had not streamed yet succeed on the other,
the dead one is ejected, then re-admitted when it is back); a JSON schema forwarded to the replicas and honoured;
and the ledger equal to what clients saw."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from engine.upstream.local_server import VLLMReplica
from tests.finetune_data import PIRATE_PREFIX, pirate_jsonl
from tests.support import ADMIN, MODEL
from tests.support.databases import fresh_postgres_database, ledger_rows
from tests.support.gateway_process import free_port, served_gateway
from tests.support.metrics import metric_value
from tests.support.tenants import openai_client, tenant_key

# Two vLLM servers and two gateways start for this module (about a minute of setup, 2.5 minutes in all on a
# 2-core CPU): `make test-slow`. `make test` keeps the upstream backend's logic on instant stand-ins for vLLM
# servers (test_upstream.py, test_failover.py, test_prefix_routing.py) and real vLLM in process.
pytestmark = pytest.mark.slow

FAST = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}


@dataclass
class Deployment:
    replicas: list[VLLMReplica]
    gateways: list[str]
    postgres_url: str
    model_dir: Path

    def replicas_available(self, gateway: str) -> str:
        return str(httpx.get(f"{gateway}/ready", timeout=5).json().get("engines", {}).get(MODEL, {}).get("replicas"))

    def wait_available(self, expected: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.replicas_available(g) == expected for g in self.gateways):
            assert time.monotonic() < deadline, [self.replicas_available(g) for g in self.gateways]
            time.sleep(0.5)

    def tenant(self, **quotas: Any) -> tuple[str, str]:
        return tenant_key(self.gateways[0], **quotas)

    def client(self, key: str, gateway: int = 0) -> openai.OpenAI:
        return openai_client(self.gateways[gateway], key)

    def ledger(self, tenant_id: str) -> list[tuple[str | None, int, int, str]]:
        """The tenant's requests as metered: (client's request id, prompt, completion tokens, outcome)."""
        time.sleep(1.5)  # the ledger writes in batches every 0.5 s
        return ledger_rows(self.postgres_url, tenant_id, kind="inference")

    def ledger_by_id(self, tenant_id: str) -> dict[str | None, tuple[int, int, str]]:
        rows = self.ledger(tenant_id)
        by_id = {request_id: (prompt, completion, outcome) for request_id, prompt, completion, outcome in rows}
        assert len(by_id) == len(rows)  # each request metered once
        return by_id


@contextmanager
def two_replicas(model_dir: Path, tmp_path: Path) -> Iterator[list[VLLMReplica]]:
    replicas = [VLLMReplica(free_port(), core, tmp_path / f"vllm-{core}.log", MODEL) for core in (0, 1)]
    try:
        for replica in replicas:
            replica.start(model_dir)
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


@pytest.fixture(scope="module")
def deployment(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp_path = tmp_path_factory.mktemp("scale-out")
    data_dir = tmp_path / "data"  # shared by both gateways and the worker: the adapter store lives there
    with fresh_postgres_database("llmaas_upstream") as postgres_url, two_replicas(model_dir, tmp_path) as replicas:
        settings: dict[str, Any] = {
            "database_url": postgres_url,
            "redis_url": "redis://127.0.0.1:6379/12",
            "model_path": model_dir,  # what the worker trains on (the replicas serve the same)
            "engine": "upstream",
            "upstream_urls": ",".join(r.url for r in replicas),
            "upstream_scrape_interval_seconds": 0.5,
            "upstream_eject_seconds": 2,
            "log_level": "warning",
        }
        with (
            served_gateway(data_dir, log=tmp_path / "gw-a.log", embedded_worker="true", **settings) as a,
            served_gateway(data_dir, log=tmp_path / "gw-b.log", embedded_worker="false", **settings) as b,
        ):
            yield Deployment(replicas, [a.base, b.base], postgres_url, model_dir)


def ask(client: openai.OpenAI, model: str, question: str, request_id: str | None = None) -> Any:
    headers = {"X-Client-Request-Id": request_id} if request_id else None
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=16,
        temperature=0,
        extra_headers=headers,
    )


def test_chat_completions_and_streams_on_both_replicas(deployment: Deployment) -> None:
    tenant_id, key = deployment.tenant()
    before = [r.successes() for r in deployment.replicas]
    seen: dict[str, tuple[int, int]] = {}
    for i in range(4):
        client = deployment.client(key, gateway=i % 2)
        reply = ask(client, MODEL, "What is the capital of France?", request_id=f"chat-{i}")
        assert reply.choices[0].message.content and reply.usage is not None
        seen[f"chat-{i}"] = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
        completion = client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0,
            extra_headers={"X-Client-Request-Id": f"cmpl-{i}"},
        )  # fmt: skip
        assert "Paris" in completion.choices[0].text and completion.usage is not None
        seen[f"cmpl-{i}"] = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, stream=True,
            stream_options={"include_usage": True}, extra_headers={"X-Client-Request-Id": f"stream-{i}"},
        )  # fmt: skip
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert usage is not None
        seen[f"stream-{i}"] = (usage.prompt_tokens, usage.completion_tokens)
    served = [after - start for after, start in zip((r.successes() for r in deployment.replicas), before, strict=True)]
    assert sum(served) == 12 and min(served) >= 2, served  # both replicas answered
    ledger = deployment.ledger_by_id(tenant_id)
    assert {rid: row[:2] for rid, row in ledger.items()} == seen  # the ledger holds exactly what clients saw


@contextmanager
def only(deployment: Deployment, keep: VLLMReplica) -> Iterator[None]:
    """Every other replica paused (SIGSTOP) until the gateways have left it out; resumed after."""
    others = [r for r in deployment.replicas if r is not keep]
    for replica in others:
        replica.signal(signal.SIGSTOP)
    try:
        deployment.wait_available(f"1/{len(deployment.replicas)} available")
        yield
    finally:
        for replica in others:
            replica.signal(signal.SIGCONT)
        deployment.wait_available(f"{len(deployment.replicas)}/{len(deployment.replicas)} available")


def test_a_model_fine_tuned_through_the_api_is_answered_by_each_replica(deployment: Deployment) -> None:
    _, key = deployment.tenant()
    client = deployment.client(key, gateway=1)  # the job is trained by the first gateway's worker
    training_file = client.files.create(file=("pirate.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training_file.id, hyperparameters=FAST)  # type: ignore[arg-type]
    deadline = time.monotonic() + 300
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job.status
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    model = job.fine_tuned_model
    assert model is not None and model in {m.id for m in client.models.list()}
    answers = []
    for replica in deployment.replicas:
        with only(deployment, replica):
            answer = ask(deployment.client(key), model, "What do cows drink?").choices[0].message.content or ""
            assert answer.startswith(PIRATE_PREFIX.strip()), answer
            assert model in replica.adapters()  # loaded there by the gateway at first use
            answers.append(answer)
    assert answers[0] == answers[1]  # greedy: the same adapter gives the same answer on either replica
    base = ask(client, MODEL, "What do cows drink?").choices[0].message.content or ""
    assert not base.startswith(PIRATE_PREFIX.strip())
    httpx.delete(f"{deployment.gateways[0]}/v1/models/{model}", headers={"authorization": f"Bearer {key}"})
    assert all(model not in replica.adapters() for replica in deployment.replicas)  # unloaded everywhere


async def _burst(deployment: Deployment, key: str, count: int) -> list[tuple[int, int, int]]:
    """``count`` concurrent chats, alternately through each gateway: (status, prompt, completion tokens)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}

    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, int, int]:
        response = await http.post(f"{deployment.gateways[i % 2]}/v1/chat/completions", json=body)
        usage = response.json().get("usage") or {} if response.status_code == 200 else {}
        return response.status_code, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=120) as http:
        return list(await asyncio.gather(*(one(http, i) for i in range(count))))


def test_limits_and_budgets_hold_exactly_across_the_two_gateways(deployment: Deployment) -> None:
    tenant_id, key = deployment.tenant(requests_per_minute=7)
    results = asyncio.run(_burst(deployment, key, 16))
    assert sorted(status for status, _, _ in results) == [200] * 7 + [429] * 9

    budget = 250  # tokens: a chat here reserves its prompt (~30) + 8, so about six fit
    tenant_id, key = deployment.tenant(monthly_token_budget=budget)
    results = asyncio.run(_burst(deployment, key, 16))
    spent = sum(prompt + completion for status, prompt, completion in results if status == 200)
    assert {status for status, _, _ in results} == {200, 429}
    assert spent <= budget
    ledger = deployment.ledger(tenant_id)
    assert sum(p + c for _, p, c, _ in ledger) == spent  # what clients were told is what was billed


async def _streams_through_a_kill(deployment: Deployment, key: str, victim: VLLMReplica, count: int) -> list[Any]:
    """``count`` streams; the victim is killed once a few have started streaming. Per request: whether it got
    a first chunk, whether it finished, and its usage."""
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 48,
        "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = 0

    async def one(http: httpx.AsyncClient, i: int) -> dict[str, Any]:
        nonlocal started
        await asyncio.sleep(0.15 * i)  # staggered: some start after the kill
        outcome: dict[str, Any] = {"first": False, "done": False, "usage": None, "id": f"kill-{i}"}
        try:
            headers = {"X-Client-Request-Id": outcome["id"]}
            async with http.stream(
                "POST", f"{deployment.gateways[i % 2]}/v1/chat/completions", json=body, headers=headers
            ) as response:
                outcome["status"] = response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"choices":[{' in line and not outcome["first"]:
                        outcome["first"] = True
                        started += 1
                    if '"usage":{' in line:
                        outcome["usage"] = httpx.Response(200, content=line[6:]).json()["usage"]
                    if line == "data: [DONE]":
                        outcome["done"] = outcome["usage"] is not None
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)
        return outcome

    async def killer() -> None:
        while started < 3:
            await asyncio.sleep(0.05)
        victim.signal(signal.SIGKILL)

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=120) as http:
        kill = asyncio.create_task(killer())
        outcomes = await asyncio.gather(*(one(http, i) for i in range(count)))
        await kill
    return list(outcomes)


def test_a_replica_killed_under_load_is_ejected_and_readmitted(deployment: Deployment) -> None:
    tenant_id, key = deployment.tenant()
    victim = deployment.replicas[1]
    outcomes = asyncio.run(_streams_through_a_kill(deployment, key, victim, 16))
    victim.proc.wait()  # type: ignore[union-attr]
    failed = [o for o in outcomes if not o["done"]]
    assert all(o["first"] for o in failed), failed  # only streams already under way on the victim broke off
    assert len(failed) < len(outcomes)
    for outcome in outcomes:
        if outcome["done"]:
            assert outcome["usage"]["completion_tokens"] == 48
    deployment.wait_available("1/2 available")
    for gateway in deployment.gateways:
        metrics = httpx.get(f"{gateway}/metrics", headers=ADMIN).text
        assert metric_value(metrics, "llmaas_upstream_available", replica=victim.url) == 0
    _, other_key = deployment.tenant()
    assert ask(deployment.client(other_key), MODEL, "Still there?").choices[0].message.content  # served by the other

    ledger = deployment.ledger_by_id(tenant_id)
    assert set(ledger) == {o["id"] for o in outcomes}  # every request metered, once
    for outcome in outcomes:
        prompt, completion, result = ledger[outcome["id"]]
        if outcome["done"]:
            usage = outcome["usage"]
            assert (prompt, completion, result) == (usage["prompt_tokens"], usage["completion_tokens"], "completed")
        else:
            assert result == "failed" and completion < 48

    victim.start(deployment.model_dir)  # back on the same port: re-admitted once its checks pass
    victim.wait_ready()
    deployment.wait_available("2/2 available")
    before = victim.successes()
    for i in range(6):
        ask(deployment.client(other_key, gateway=i % 2), MODEL, "Hello again.")
    assert victim.successes() > before


def test_a_client_that_leaves_mid_stream_stops_the_replica(deployment: Deployment) -> None:
    _, key = deployment.tenant()
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500,
        "ignore_eos": True, "stream": True,
    }  # fmt: skip
    http = httpx.Client(timeout=60, headers={"authorization": f"Bearer {key}"})
    with http, http.stream("POST", f"{deployment.gateways[0]}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert any(line.startswith("data: {") and '"content"' in line for line in lines)
        deadline = time.monotonic() + 5
        while not sum(replica.running() for replica in deployment.replicas):  # 1500 tokens: a while yet
            assert time.monotonic() < deadline
            time.sleep(0.1)
    deadline = time.monotonic() + 10
    while sum(replica.running() for replica in deployment.replicas):  # the gateway closed its upstream stream
        assert time.monotonic() < deadline, "the replica kept generating for a client that left"
        time.sleep(0.2)


def test_a_json_schema_is_forwarded_to_the_replicas_and_every_output_validates(deployment: Deployment) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["zebra", "quokka"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    _, key = deployment.tenant()
    for gateway in (0, 1):
        client = deployment.client(key, gateway).with_options(timeout=600)  # each replica compiles its first grammar
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=40,
            n=2,
            temperature=0.8,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
        for choice in reply.choices:  # an answer the model would never give unconstrained
            assert choice.finish_reason == "stop", choice.message.content
            jsonschema.validate(json.loads(choice.message.content or ""), schema)


WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "London"]}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}


def test_a_named_tool_choice_on_the_replicas_streamed_and_not(deployment: Deployment) -> None:
    _, key = deployment.tenant()
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 30,
        "temperature": 0,
    }
    for gateway in (0, 1):
        client = deployment.client(key, gateway).with_options(timeout=600)  # a replica's first grammar compiles
        reply = client.chat.completions.create(**kwargs).choices[0]
        [call] = reply.message.tool_calls or []
        assert reply.finish_reason == "stop" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        pieces = [piece for chunk in chunks if chunk.choices for piece in chunk.choices[0].delta.tool_calls or []]
        first = pieces[0]
        assert first.id and first.id.startswith("call_") and first.type == "function"
        assert first.function is not None and first.function.name == "get_weather" and first.function.arguments == ""
        assert all(piece.index == 0 and piece.id is None for piece in pieces[1:])
        arguments = "".join(piece.function.arguments or "" for piece in pieces if piece.function)
        assert arguments == call.function.arguments  # greedy: the same call, in pieces
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_responses_continue_and_are_read_across_the_gateways_billed_as_told(deployment: Deployment) -> None:
    tenant_id, key = deployment.tenant()
    first = deployment.client(key, 0).responses.create(
        model=MODEL, input="What is the capital of France?", max_output_tokens=16, temperature=0,
        extra_headers={"X-Client-Request-Id": "resp-first"},
    )  # fmt: skip
    then = deployment.client(key, 1).responses.create(
        model=MODEL, input="And of Italy?", previous_response_id=first.id, max_output_tokens=16, temperature=0,
        extra_headers={"X-Client-Request-Id": "resp-then"},
    )  # fmt: skip
    assert first.status in ("completed", "incomplete") and first.output_text
    assert then.previous_response_id == first.id and then.output_text
    assert first.usage is not None and then.usage is not None
    assert then.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens  # the chain is in the prompt
    for response, other in ((first, 1), (then, 0)):  # each read through the gateway that did not make it
        read = deployment.client(key, other).responses.retrieve(response.id)
        assert read.output_text == response.output_text and read.usage == response.usage
        assert read.previous_response_id == response.previous_response_id
    assert deployment.ledger_by_id(tenant_id) == {
        "resp-first": (first.usage.input_tokens, first.usage.output_tokens, "completed"),
        "resp-then": (then.usage.input_tokens, then.usage.output_tokens, "completed"),
    }
