"""Prefix caching reported and billed. End to end on both engine modes, one real vLLM at a time (the gateway's own
engine, then one vLLM OpenAI server behind an upstream gateway), through the official client over HTTP: the same
long prompt twice, and the second reads its leading blocks from the engine's cache (``cached_tokens`` > 0, whole
blocks) in chat and completions, streamed and not, and in the Responses API; the ledger records the cached tokens
and charges them at the tenant's cached-input price, and the usage report sums them. On their own: the upstream
chunk's count parsed, the count carried to the usage (never to the client as a delta of its own), the price rule,
and the ledger's and the journal's records."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from engine.protocol import AdapterRef, CompletionDelta, SamplingOptions
from engine.translate import chunk_deltas
from engine.upstream.local_server import VLLMReplica
from gateway.accounting.journal import encode, replayable
from gateway.accounting.pricing import Price, PriceBook
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.accounting.usage import UsageFilters, UsageReports
from gateway.clock import utcnow
from gateway.db import Database
from gateway.db.database import sqlite_url
from gateway.inference.generation import GenerationRun
from gateway.tenancy.models import ModelPrice, usd_to_nanos
from tests.support import MODEL
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import free_port, served_gateway
from tests.support.tenants import openai_client, tenant_key

PRICES = {MODEL: {"input": "1", "output": "2", "cached_input": "0.25"}}
PRICE = Price(Decimal(1), Decimal(2), Decimal("0.25"))


def long_instructions() -> str:
    """About a thousand tokens of system prompt, new to the engine: its first block holds a fresh tag."""
    rules = " ".join(f"Rule {i}: when asked about subject number {i}, answer in one short sentence." for i in range(48))
    return f"Session {uuid.uuid4().hex}. You are a terse assistant. {rules}"


# -- end to end, on both engine modes -------------------------------------------------------------------------------
@dataclass
class Served:
    base: str
    database_url: str
    block_size: int
    client: openai.OpenAI


@contextmanager
def upstream_gateway(model_dir: Path, tmp: Path) -> Iterator[tuple[str, str, int]]:
    """One vLLM OpenAI server (started as ``VLLMReplica`` starts it: with ``--enable-prompt-tokens-details``) behind
    an upstream gateway on PostgreSQL: the gateway's URL, its database's, and the server's KV block size."""
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_database("llmaas_prefix"))
        replica = VLLMReplica(free_port(), 0, tmp / "vllm.log", MODEL)
        stack.callback(replica.stop)
        replica.start(model_dir)
        replica.wait_ready()
        settings: dict[str, Any] = {
            "database_url": database_url,
            "model_path": model_dir,
            "engine": "upstream",
            "upstream_urls": replica.url,
            "log_level": "warning",
        }
        gateway = stack.enter_context(served_gateway(tmp / "data", log=tmp / "gateway.log", **settings))
        config = httpx.get(f"{replica.url}/metrics", timeout=10).text.split("vllm:cache_config_info{", 1)[1]
        yield gateway.base, database_url, int(config.split('block_size="', 1)[1].split('"', 1)[0])


@pytest.fixture(scope="module", params=["vllm", pytest.param("upstream", marks=pytest.mark.slow)])
def served(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A gateway on one real engine: the suite's own (the model in process, SQLite), or one vLLM server upstream
    (PostgreSQL); and a tenant with a cached-input price."""
    with ExitStack() as stack:
        if request.param == "upstream":
            tmp = tmp_path_factory.mktemp("prefix-upstream")
            base, database_url, block_size = stack.enter_context(upstream_gateway(model_dir, tmp))
        else:
            base, database_url = (
                request.getfixturevalue("server"),
                sqlite_url(request.getfixturevalue("server_data_dir")),
            )
            engine = httpx.get(f"{base}/ready", timeout=10).json()["engines"][MODEL]
            assert engine["prefix_caching"] == "on"
            block_size = int(engine["kv_block_size"])
        _, key = tenant_key(base, "prefix", model_prices=PRICES)
        yield Served(base, database_url, block_size, openai_client(base, key))


def assert_cached(cached: int | None, prompt_tokens: int, block_size: int) -> None:
    assert cached is not None and 0 < cached <= prompt_tokens, (cached, prompt_tokens)
    assert cached % block_size == 0, (cached, block_size)


def chat(served: Served, system: str, question: str, request_id: str | None = None) -> Any:
    return served.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=4,
        temperature=0,
        extra_headers={"X-Client-Request-Id": request_id} if request_id else None,
    )


def ledger(served: Served, request_id: str) -> tuple[int, int, int, int]:
    """The request's record: prompt, cached, completion tokens and cost (nano-USD)."""
    engine = create_engine(served.database_url)
    query = text(
        "SELECT prompt_tokens, cached_tokens, completion_tokens, cost FROM usage_records WHERE client_request_id = :r"
    )
    try:
        for _ in range(40):  # the ledger writes in batches every 0.5 s
            with engine.connect() as conn:
                row = conn.execute(query, {"r": request_id}).first()
            if row is not None:
                return int(row[0]), int(row[1]), int(row[2]), usd_to_nanos(Decimal(str(row[3])))  # SQLite: a float
            time.sleep(0.25)
    finally:
        engine.dispose()
    raise AssertionError(f"no ledger record for {request_id}")


def test_a_repeated_prompt_is_reported_and_billed_as_cached(served: Served) -> None:
    system = long_instructions()
    tag = uuid.uuid4().hex[:8]
    first = chat(served, system, "What is subject 3?", f"first-{tag}")
    second = chat(served, system, "What is subject 5?", f"second-{tag}")
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens > 900
    assert first.usage.prompt_tokens_details is not None and first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert_cached(cached, second.usage.prompt_tokens, served.block_size)
    assert cached is not None and cached > first.usage.prompt_tokens - 2 * served.block_size  # all but the end

    for reply, request_id in ((first, f"first-{tag}"), (second, f"second-{tag}")):
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        reported = reply.usage.prompt_tokens_details.cached_tokens or 0
        prompt, cached_billed, completion, cost = ledger(served, request_id)
        assert (prompt, cached_billed, completion) == (
            reply.usage.prompt_tokens,
            reported,
            reply.usage.completion_tokens,
        )
        assert cost == PRICE.cost_nanos(prompt, completion, cached_billed)
    uncached_cost = PRICE.cost_nanos(second.usage.prompt_tokens, second.usage.completion_tokens)
    assert ledger(served, f"second-{tag}")[3] < uncached_cost

    with httpx.Client(base_url=served.base, headers={"authorization": f"Bearer {served.client.api_key}"}) as http:
        report = http.get("/v1/usage", params={"bucket": "none"}, timeout=30).json()
    assert report["totals"]["cached_tokens"] >= cached


def test_no_tenant_reads_another_tenants_cached_prompt(served: Served) -> None:
    """The prefix cache is salted per tenant: another tenant sending the same prompt finds nothing cached (so
    ``cached_tokens`` tells no one what another tenant sent), while the owner finds it."""
    system = long_instructions()
    chat(served, system, "What is subject 2?")
    _, other_key = tenant_key(served.base, f"prefix-other-{uuid.uuid4().hex[:6]}")
    stranger = Served(served.base, served.database_url, served.block_size, openai_client(served.base, other_key))
    theirs, again = chat(stranger, system, "What is subject 2?"), chat(served, system, "What is subject 4?")
    assert theirs.usage is not None and theirs.usage.prompt_tokens_details is not None
    assert theirs.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert_cached(again.usage.prompt_tokens_details.cached_tokens, again.usage.prompt_tokens, served.block_size)


def test_streams_report_the_cached_tokens_in_their_usage_chunk(served: Served) -> None:
    system = long_instructions()
    chat(served, system, "Warm the cache.")
    stream = served.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "What is subject 7?"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usages) == 1 and usages[0].prompt_tokens_details is not None
    assert_cached(usages[0].prompt_tokens_details.cached_tokens, usages[0].prompt_tokens, served.block_size)

    prompt = long_instructions() + "\nQuestion: what is subject 9?\nAnswer:"
    plain = served.client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    assert plain.usage is not None and plain.usage.prompt_tokens_details is not None
    assert plain.usage.prompt_tokens_details.cached_tokens == 0
    again = served.client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert_cached(again.usage.prompt_tokens_details.cached_tokens, again.usage.prompt_tokens, served.block_size)
    streamed = served.client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in streamed if chunk.usage is not None][-1]
    assert usage.prompt_tokens_details is not None
    assert_cached(usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens, served.block_size)


def test_the_responses_api_reports_cached_input_tokens(served: Served) -> None:
    instructions = long_instructions()
    first = served.client.responses.create(
        model=MODEL, instructions=instructions, input="What is subject 2?", max_output_tokens=16, temperature=0
    )
    assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 0
    second = served.client.responses.create(
        model=MODEL, instructions=instructions, input="What is subject 4?", max_output_tokens=16, temperature=0
    )
    assert second.usage is not None
    assert_cached(second.usage.input_tokens_details.cached_tokens, second.usage.input_tokens, served.block_size)


# -- the parts on their own -------------------------------------------------------------------------------------
def test_the_upstream_usage_chunk_carries_the_replicas_count() -> None:
    closing = {"choices": [], "usage": {"prompt_tokens": 40, "prompt_tokens_details": {"cached_tokens": 32}}}
    assert chunk_deltas(closing, None) == [CompletionDelta(0, "", [], cached_tokens=32)]
    # A replica started without --enable-prompt-tokens-details says nothing: nothing counted as cached.
    assert chunk_deltas({"choices": [], "usage": {"prompt_tokens": 40, "prompt_tokens_details": None}}, None) == []
    assert chunk_deltas({"choices": [], "usage": {"prompt_tokens_details": {"cached_tokens": "32"}}}, None) == []
    text_chunk = {"choices": [{"index": 0, "text": "Hi", "token_ids": [5]}]}
    assert [delta.cached_tokens for delta in chunk_deltas(text_chunk, None)] == [None]


class CountingEngine:
    """Two tokens, then (as an upstream replica does) a delta of its own with the cached count only."""

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
        *,
        whole: bool = False,
    ) -> AsyncIterator[list[CompletionDelta]]:
        yield [CompletionDelta(0, "a", [1])]
        yield [CompletionDelta(0, "b", [2], finish_reason="length")]
        yield [CompletionDelta(0, "", [], cached_tokens=16)]


async def test_a_run_adds_the_engines_count_to_its_usage_and_passes_on_only_output() -> None:
    reports: list[Any] = []
    delivering: list[tuple[int, int, int]] = []

    async def record(prompt: int, delivered: int, cached: int) -> None:
        delivering.append((prompt, delivered, cached))

    run = GenerationRun(
        CountingEngine(),  # type: ignore[arg-type]  # generate is all a run uses
        MODEL,
        [list(range(40)), list(range(40))],
        SamplingOptions(max_tokens=2),
        "req",
        [reports.append],
        streaming=True,
        delivering=record,
    )
    deltas = [delta async for _, delta in run.deltas()]
    assert sorted(delta.text for delta in deltas) == ["a", "a", "b", "b"]  # no delta of the count's own
    assert run.usage.cached_tokens == 32 and run.usage.as_dict()["prompt_tokens_details"] == {"cached_tokens": 32}
    assert reports[0].usage.cached_tokens == 32
    assert delivering[0] == (80, 1, 0)  # a count the engine reports at the end counts from then on


def test_a_cached_token_costs_the_cached_input_price_else_a_fraction_of_the_input_price() -> None:
    entry = ModelPrice(input=Decimal(2), output=Decimal(4), cached_input=Decimal("0.1"))
    assert PriceBook({MODEL: entry}).price_for({}, MODEL, "inference").cached_input == Decimal("0.1")
    plain = ModelPrice(input=Decimal(2), output=Decimal(4))
    assert PriceBook({MODEL: plain}).price_for({}, MODEL, "inference").cached_input == Decimal(1)  # 0.5 by default
    quarter = PriceBook({MODEL: plain}, cached_input_fraction=Decimal("0.25"))
    assert quarter.price_for({}, MODEL, "inference").cached_input == Decimal("0.5")
    assert PriceBook({MODEL: entry}, batch_fraction=Decimal("0.5")).price_for({}, MODEL, "batch") == Price(
        Decimal(1), Decimal(2), Decimal("0.05")
    )  # a batch's price scales the cached-input price too
    assert PriceBook({MODEL: plain}).price_for({}, MODEL, "training").cached_input == Decimal(2)
    price = Price(Decimal(2), Decimal(4), Decimal("0.5"))
    # 600 uncached x 2 + 400 cached x 0.5 + 10 x 4 micro-USD = 1440 micro-USD
    assert price.cost_nanos(1000, 10, 400) == 1_440_000
    assert price.cost_nanos(1000, 10, 5000) == price.cost_nanos(1000, 10, 1000)  # never more cached than prompt
    assert price.cost_nanos(1000, 10) == 2_040_000


def usage_entry(request_id: str, prompt: int, cached: int) -> UsageEntry:
    return UsageEntry(
        request_id=request_id,
        tenant_id="ten_a",
        key_id=None,
        model=MODEL,
        kind="inference",
        outcome="completed",
        prompt_tokens=prompt,
        completion_tokens=3,
        cost_nanos=PRICE.cost_nanos(prompt, 3, cached),
        created_at=utcnow(),
        cached_tokens=cached,
    )


def test_the_journal_carries_cached_tokens_and_replays_old_records_as_uncached() -> None:
    entry = usage_entry("req_1", 100, 64)
    (replayed,) = replayable([encode(entry).decode()])
    assert replayed == entry
    old = encode(entry).decode().replace(',"cached_tokens":64', "")
    assert "cached_tokens" not in old
    (replayed_old,) = replayable([old])
    assert isinstance(replayed_old, UsageEntry) and replayed_old.cached_tokens == 0


def test_the_ledger_and_its_daily_sums_hold_cached_tokens(database: Database) -> None:
    UsageLedger(database).write(
        [usage_entry("req_1", 100, 64), usage_entry("req_2", 50, 0), usage_entry("req_3", 80, 48)]
    )
    for filters in (UsageFilters(bucket="day"), UsageFilters(bucket="hour")):  # the daily sums, and the ledger's rows
        report = UsageReports(database).report("ten_a", filters, ("model",))
        assert report["totals"]["cached_tokens"] == 112 and report["totals"]["prompt_tokens"] == 230
        assert [row["cached_tokens"] for row in report["data"]] == [112]
