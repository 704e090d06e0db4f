"""A replica's failure costs the client nothing it did not receive. Two replicas that fail on command
(``tests/support/faulty_upstream.py``: a connection cut mid-body, a replica that goes silent, one that answers
garbage, a 500) behind a real gateway process, through the official client: a non-streamed answer cut at any
point is answered whole by the other replica and billed once; a stream cut before its first token is retried
the same way, one cut after it ends with an OpenAI error event and is billed for what was streamed; when no
replica can answer, a 503 with ``retry-after``, streamed or not. A replica SIGKILLed under concurrent load (a
stand-in here, a real vLLM server behind the ``slow`` marker), and in process a vLLM engine core killed
mid-request (``slow``). In every test the ledger holds, request for request, what the client received."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engine.upstream.local_server import VLLMReplica
from gateway.db.database import sqlite_url
from tests.support import MODEL
from tests.support.databases import ledger_rows
from tests.support.faulty_upstream import FaultyReplica, faulty_upstream
from tests.support.gateway_process import GatewayProcess, free_port, served_gateway
from tests.support.tenants import tenant_key

MAX_TOKENS = 12
LONG = 64
"""Tokens of an answer of a replica killed under load."""
LONGER = 400
"""Tokens of an answer of the in-process engine killed mid-request (long enough for the kill to land mid-answer)."""
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story."}]


@dataclass
class Received:
    """What one client request got: its status, the completion tokens that reached it (an ``x`` each, from the
    stand-in) and the usage it was shown (None where it got none)."""

    status: int
    tokens: int
    usage: tuple[int, int] | None
    error: str | None = None


@dataclass
class Pool:
    gateway: GatewayProcess
    replicas: list[FaultyReplica]
    data_dir: Path

    def wait_available(self, expected: str = "2/2 available", seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self.availability() != expected:
            assert time.monotonic() < deadline, self.availability()
            time.sleep(0.2)

    def availability(self) -> str:
        ready = httpx.get(f"{self.gateway.base}/ready", timeout=5).json()
        return str(ready.get("engines", {}).get(MODEL, {}).get("replicas"))


def upstream_settings(urls: list[str], model_dir: Path) -> dict[str, Any]:
    """A gateway on the upstream backend in front of ``urls``, quick to leave a replica out and to give up on a
    silent one (2 s)."""
    return {
        "engine": "upstream",
        "embedded_worker": "false",
        "model_path": model_dir,
        "upstream_urls": ",".join(urls),
        "upstream_scrape_interval_seconds": 0.5,
        "upstream_eject_seconds": 2,
        "upstream_read_timeout_seconds": 2,
    }


@pytest.fixture(scope="module")
def pool(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp_path = tmp_path_factory.mktemp("failover")
    ports = [free_port(), free_port()]
    with (
        faulty_upstream(ports[0], model_dir, tmp_path / "a.log", seconds_per_token=0.02) as a,
        faulty_upstream(ports[1], model_dir, tmp_path / "b.log", seconds_per_token=0.02) as b,
        served_gateway(tmp_path, **upstream_settings([a.url, b.url], model_dir)) as gateway,
    ):
        yield Pool(gateway, [a, b], tmp_path)


@pytest.fixture
def healthy(pool: Pool) -> Iterator[Pool]:
    """The pool with both replicas in, and no fault left over after the test."""
    pool.wait_available()
    yield pool
    for replica in pool.replicas:
        replica.inject("error", count=0)


@dataclass(frozen=True)
class Load:
    """What each request of a burst asks: ``max_tokens`` (all of them: ``ignore_eos``), and whether it streams."""

    stream: bool
    max_tokens: int = MAX_TOKENS
    spread: float = 0
    """Seconds between the starts of the burst's requests."""


async def ask(client: openai.AsyncOpenAI, request_id: str, load: Load, started: set[str] | None = None) -> Received:
    """One chat through the official client; what reached it (a stream's id into ``started`` at its first token).
    Tokens are counted by their logprobs where the model gives them (a real one), else a character each."""
    headers = {"X-Client-Request-Id": request_id}
    extra = {"ignore_eos": True}
    tokens = 0
    try:
        if not load.stream:
            reply = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=load.max_tokens, extra_headers=headers, extra_body=extra
            )
            assert reply.usage is not None
            text = reply.choices[0].message.content or ""
            return Received(200, len(text), (reply.usage.prompt_tokens, reply.usage.completion_tokens))
        chunks = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=load.max_tokens, stream=True, logprobs=True,
            stream_options={"include_usage": True}, extra_headers=headers, extra_body=extra,
        )  # fmt: skip
        usage = None
        async for chunk in chunks:
            for choice in chunk.choices:
                counted = choice.logprobs.content if choice.logprobs and choice.logprobs.content else None
                tokens += len(counted) if counted else len(choice.delta.content or "")
            if tokens and started is not None:
                started.add(request_id)
            if chunk.usage is not None:
                usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        return Received(200, tokens, usage)
    except openai.APIStatusError as exc:
        return Received(
            exc.status_code, tokens, None, f"{exc.body}|retry-after={exc.response.headers.get('retry-after')}"
        )
    except openai.APIError as exc:  # an error event in a stream that had started
        return Received(200, tokens, None, str(exc.body))


async def ask_many(base: str, key: str, count: int, load: Load, started: set[str] | None = None) -> dict[str, Received]:
    """``count`` concurrent chats, each by its own request id."""
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=300)
    ids = [f"req-{uuid.uuid4().hex[:8]}" for _ in range(count)]

    async def one(index: int, request_id: str) -> Received:
        await asyncio.sleep(index * load.spread)
        return await ask(client, request_id, load, started)

    async with client:
        received = await asyncio.gather(*(one(index, request_id) for index, request_id in enumerate(ids)))
    return dict(zip(ids, received, strict=True))


def prompt_tokens(received: dict[str, Received]) -> int:
    """The prompt's tokens, as the clients that got a usage were told (every request sends the same prompt)."""
    [count] = {usage[0] for usage in (r.usage for r in received.values()) if usage is not None}
    return count


def assert_billed_as_received(database_url: str, tenant_id: str, received: dict[str, Received]) -> None:
    """The ledger, request for request: a whole answer billed as its usage said, once; a stream cut after tokens
    went out billed for its prompt and those tokens; anything that reached the client no token, nothing."""
    prompt = prompt_tokens(received)
    expected: dict[str | None, tuple[int, int]] = {}
    for request_id, got in received.items():
        if got.usage is not None:
            expected[request_id] = got.usage
        else:
            expected[request_id] = (prompt, got.tokens) if got.tokens else (0, 0)
    deadline = time.monotonic() + 15
    while True:  # the ledger writes in batches
        rows = ledger_rows(database_url, tenant_id, kind="inference")
        billed: dict[str | None, tuple[int, int]] = {}
        for row_id, p, c, _ in rows:
            before = billed.get(row_id, (0, 0))
            billed[row_id] = (before[0] + p, before[1] + c)
        if len(rows) >= len(received) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rows) == len(received), rows  # each request metered once
    assert billed == expected


def through_faults(pool: Pool, key: str, mode: str, after: int, requests: int, stream: bool) -> dict[str, Received]:
    """``requests`` concurrent chats while the first replica's next two completions fail as ``mode`` says, after
    ``after`` tokens went out (and some do fail there)."""
    victim = pool.replicas[0]
    before = victim.faulted()
    victim.inject(mode, after=after, count=2)
    received = asyncio.run(ask_many(pool.gateway.base, key, requests, Load(stream)))
    assert victim.faulted() > before
    return received


@pytest.mark.parametrize("mode", ["reset", "hang", "garbage", "error"])
def test_a_non_streamed_answer_cut_anywhere_is_answered_by_another_replica_and_billed_once(
    healthy: Pool, mode: str
) -> None:
    tenant_id, key = tenant_key(healthy.gateway.base)
    received = through_faults(healthy, key, mode, after=5, requests=8, stream=False)
    for got in received.values():
        assert (got.status, got.tokens, got.error) == (200, MAX_TOKENS, None)
        assert got.usage is not None and got.usage[1] == MAX_TOKENS
    assert_billed_as_received(sqlite_url(healthy.data_dir), tenant_id, received)


@pytest.mark.parametrize("mode", ["reset", "hang", "garbage", "error"])
def test_a_stream_cut_before_its_first_token_is_retried_one_cut_after_ends_with_an_error_event(
    healthy: Pool, mode: str
) -> None:
    tenant_id, key = tenant_key(healthy.gateway.base)
    early = through_faults(healthy, key, mode, after=0, requests=6, stream=True)  # retried elsewhere
    assert all((got.tokens, got.error) == (MAX_TOKENS, None) for got in early.values()), early
    healthy.wait_available()
    late = through_faults(healthy, key, mode, after=4, requests=6, stream=True)  # four tokens out, then the fault
    cut = [got for got in late.values() if got.error]
    for got in late.values():
        if got.error is None:
            assert got.tokens == MAX_TOKENS and got.usage == (prompt_tokens(early), MAX_TOKENS)
    if mode == "error":  # a 500 comes before any token: always retried
        assert not cut
    else:
        assert cut and all(got.tokens == 4 and "engine_error" in str(got.error) for got in cut), cut
    assert_billed_as_received(sqlite_url(healthy.data_dir), tenant_id, {**early, **late})


def test_when_no_replica_can_answer_the_client_gets_a_503_with_retry_after_streamed_or_not_and_no_bill(
    healthy: Pool,
) -> None:
    tenant_id, key = tenant_key(healthy.gateway.base)
    first = asyncio.run(ask_many(healthy.gateway.base, key, 1, Load(stream=False)))  # the prompt's size, billed
    for replica in healthy.replicas:
        replica.inject("error", count=100)
    refused = asyncio.run(ask_many(healthy.gateway.base, key, 2, Load(stream=False)))
    for got in refused.values():
        assert got.status == 503 and "engine_unavailable" in str(got.error) and "retry-after=1" in str(got.error)
    streamed = asyncio.run(ask_many(healthy.gateway.base, key, 2, Load(stream=True)))
    for got in streamed.values():  # refused with the same status, before the stream began
        assert (got.status, got.tokens) == (503, 0) and "retry-after=1" in str(got.error), got
    assert_billed_as_received(sqlite_url(healthy.data_dir), tenant_id, {**first, **refused, **streamed})


def through_a_kill(
    base: str, key: str, count: int, load: Load, ready: Callable[[set[str]], bool], kill: Callable[[], None]
) -> tuple[dict[str, Received], dict[str, Received]]:
    """``count`` plain requests and ``count`` streams at once, ``load`` each; ``kill`` once ``ready`` says so of
    the streams that got a first token (within two minutes). What the plain ones and the streams received."""

    async def run() -> tuple[dict[str, Received], dict[str, Received]]:
        started: set[str] = set()

        async def killer() -> None:
            deadline = time.monotonic() + 120
            while not ready(started):
                assert time.monotonic() < deadline, started
                await asyncio.sleep(0.05)
            kill()

        plain, streams, _ = await asyncio.gather(
            ask_many(base, key, count, replace(load, stream=False)),
            # the streams' starts drift against the plain ones': the router's turns put both kinds on each replica
            ask_many(base, key, count, replace(load, stream=True, spread=load.spread * 1.5), started),
            killer(),
        )
        return plain, streams

    return asyncio.run(run())


def assert_cut_streams_and_whole_answers(received: dict[str, Received], max_tokens: int) -> list[Received]:
    """Every answer that was not cut is whole, every refusal got nothing; the cut ones (returned) are streams that
    got some tokens."""
    cut = [got for got in received.values() if got.error and got.status == 200]
    for got in received.values():
        if got.error is None:
            assert got.status == 200 and got.usage is not None and got.usage[1] == max_tokens, got
        elif got.status != 200:
            assert got.tokens == 0
    assert all(0 < got.tokens < max_tokens for got in cut), cut  # a stream cut before its first token is retried
    return cut


def test_a_replica_killed_under_load_costs_its_clients_nothing_they_did_not_receive(
    model_dir: Path, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    with (
        faulty_upstream(ports[0], model_dir, tmp_path / "a.log", seconds_per_token=0.03) as a,
        faulty_upstream(ports[1], model_dir, tmp_path / "b.log", seconds_per_token=0.03) as b,
        served_gateway(tmp_path, **upstream_settings([a.url, b.url], model_dir)) as gateway,
    ):
        tenant_id, key = tenant_key(gateway.base)

        plain, streams = through_a_kill(
            gateway.base,
            key,
            12,
            Load(stream=False, max_tokens=LONG, spread=0.02),
            lambda started: len(started) >= 10,  # streams on both replicas under way, two seconds from their end
            lambda: a.proc.send_signal(signal.SIGKILL),
        )
        received = {**plain, **streams}
        assert all((got.status, got.tokens, got.error) == (200, LONG, None) for got in plain.values()), plain
        assert assert_cut_streams_and_whole_answers(received, LONG), received  # streams under way on the victim
        assert_billed_as_received(sqlite_url(tmp_path), tenant_id, received)


@pytest.mark.slow
def test_a_real_vllm_replica_killed_under_load_costs_its_clients_nothing_they_did_not_receive(
    model_dir: Path, tmp_path: Path
) -> None:
    victim = VLLMReplica(free_port(), 0, tmp_path / "vllm.log", MODEL)
    other_port = free_port()
    settings = upstream_settings([victim.url, f"http://127.0.0.1:{other_port}"], model_dir)
    settings["upstream_read_timeout_seconds"] = 60  # a loaded CPU takes seconds to a first token
    victim.start(model_dir)
    try:
        victim.wait_ready()
        with (
            faulty_upstream(other_port, model_dir, tmp_path / "other.log", seconds_per_token=0.02),
            served_gateway(tmp_path, **settings) as gateway,
        ):
            tenant_id, key = tenant_key(gateway.base)
            first = asyncio.run(ask_many(gateway.base, key, 1, Load(stream=False)))

            plain, streams = through_a_kill(
                gateway.base,
                key,
                8,
                Load(stream=False, max_tokens=LONG, spread=0.05),
                lambda started: len(started) >= 6 and victim.running() >= 2,  # streams and plain ones on the victim
                lambda: victim.signal(signal.SIGKILL),
            )
            assert all(got.error is None for got in plain.values()), plain  # every one answered whole
            received = {**plain, **streams}
            assert assert_cut_streams_and_whole_answers(received, LONG)
            assert_billed_as_received(sqlite_url(tmp_path), tenant_id, {**first, **received})
    finally:
        victim.stop()


def engine_core(gateway: psutil.Process) -> psutil.Process:
    """The vLLM engine core process under an in-process gateway serving one model."""
    [core] = [child for child in gateway.children(recursive=True) if "EngineCore" in child.name()]
    return core


@pytest.mark.slow
def test_in_process_an_engine_core_killed_mid_request_is_a_503_and_bills_only_what_was_streamed(
    model_dir: Path, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {"model_path": model_dir, "embedding_model": "", "kv_cache_space_gib": 1}
    with served_gateway(tmp_path, **settings) as gateway:  # the chat model only: one engine core
        tenant_id, key = tenant_key(gateway.base)
        first = asyncio.run(ask_many(gateway.base, key, 1, Load(stream=False)))
        core = engine_core(psutil.Process(gateway.process.pid))

        plain, streams = through_a_kill(
            gateway.base,
            key,
            2,
            Load(stream=False, max_tokens=LONGER),
            lambda started: len(started) >= 2,
            lambda: core.send_signal(signal.SIGKILL),
        )
        for got in plain.values():  # never a 500: the engine is gone, retry later (elsewhere)
            assert got.status == 503 and "engine_unavailable" in str(got.error), got
        received = {**plain, **streams}
        cut = assert_cut_streams_and_whole_answers(received, LONGER)
        assert len(cut) == 2 and all("engine_unavailable" in str(got.error) for got in cut), cut
        assert_billed_as_received(sqlite_url(tmp_path), tenant_id, {**first, **received})
