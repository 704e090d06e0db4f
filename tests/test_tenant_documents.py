"""No tenant-supplied document reaches anything but itself, and every tenant-controlled pattern or grader runs in
bounded time off the event loop: eval item schemas whose ``$ref`` points at a listener this test runs (or at
``file://``) are refused without one request reaching it; regexes run on RE2; documents past the depth, size and
count bounds are 400s (never 500s or ``RecursionError``); items are checked while they stream in; grading and
validation run in worker processes while ``/health`` keeps answering; output item ids are unguessable; training
files nested 5,000 deep are 400s and a job's token estimate does not stall the gateway.

HTTP tests run against a real gateway process (the instant fake engine, PostgreSQL); what is stored is also
checked on SQLite and PostgreSQL through the ``database`` fixture."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pytest
from starlette.concurrency import run_in_threadpool

from adapters.datasets import ChatExample, DatasetError, Message, check_jsonl
from engine.tokenizer import HFTokenizer
from gateway import bounds, documents
from gateway.db import Database
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.graders import GradingTimedOut, TextTooLong, grade, grade_item
from gateway.evals.items import checked_items
from gateway.evals.models import EvalCreate, RunCreate
from gateway.evals.queue import RunQueue
from gateway.evals.recipe import ItemStatus
from gateway.evals.service import EvalService
from gateway.fine_tuning.creation import estimate_tokens
from gateway.fine_tuning.files import FileStore
from gateway.tenancy.models import TenantCreate
from gateway.tenancy.service import TenancyService
from gateway.workers import Workers, WorkTimedOut
from tests.support import MODEL
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import fake_gateway
from tests.support.static_server import Served, serving
from tests.support.tenants import tenant_key

SECRET = "leaked-secret-4f1c"
CATASTROPHIC = "^(a+)+$"
HOSTILE_TEXT = "a" * 5_000 + "!"  # Python's re would take longer than the universe's age on this
STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.expected}}",
    "operation": "eq",
}
FUZZY = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.expected}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.5,
}
STALL_BOUND_S = 1.0


# -- a listener that no schema may reach -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listener() -> Iterator[Served]:
    schema = json.dumps({"type": "string", "description": SECRET}).encode()
    with serving(schema, "application/schema+json") as served:
        yield served


# -- the gateway -----------------------------------------------------------------------------------------------------


@dataclass
class Gateway:
    base: str
    process: psutil.Process


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with (
        fresh_postgres_database("llmaas_documents") as url,
        fake_gateway(tmp_path_factory.mktemp("documents"), database_url=url) as running,
    ):
        yield Gateway(running.base, psutil.Process(running.process.pid))


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    _, key = tenant_key(gateway.base, "documents", requests_per_minute=10_000)
    with httpx.Client(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}, timeout=60) as tenant:
        yield tenant


@contextmanager
def health_probe(base: str) -> Iterator[list[float]]:
    """``/health`` asked again and again while the block runs; the list gets each answer's seconds."""
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while not done.is_set():
                started = time.monotonic()
                assert http.get("/health").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        yield latencies
    finally:
        done.set()
        thread.join()


def create_eval(client: httpx.Client, item_schema: Any, criteria: list[dict[str, Any]] | None = None) -> httpx.Response:
    return client.post(
        "/v1/evals",
        json={
            "data_source_config": {"type": "custom", "item_schema": item_schema},
            "testing_criteria": criteria or [STRING_CHECK],
        },
    )


def jsonl_run(client: httpx.Client, eval_id: str, source: dict[str, Any]) -> httpx.Response:
    return client.post(f"/v1/evals/{eval_id}/runs", json={"data_source": {"type": "jsonl", "source": source}})


def inline(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"type": "file_content", "content": list(entries)}


def upload(client: httpx.Client, content: bytes, purpose: str = "evals", name: str = "items.jsonl") -> httpx.Response:
    return client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})


def finished(client: httpx.Client, eval_id: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = client.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()
        if run["status"] in ("completed", "failed", "canceled"):
            return run  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish")


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


# -- $ref: only into the schema itself ------------------------------------------------------------------------------


def test_no_schema_reference_reaches_the_network_or_the_filesystem(
    gateway: Gateway, client: httpx.Client, listener: Served
) -> None:
    outside = [
        f"{listener.url}/schema.json",
        f"{listener.url}/never-answers",
        "file:///etc/passwd",
        "ftp://127.0.0.1/schema.json",
        "urn:example:schema",
        "other.json",
        "/etc/passwd",
    ]
    schemas: list[Any] = [{"$ref": target} for target in outside]
    schemas += [
        {"type": "object", "properties": {"question": {"$ref": f"{listener.url}/q.json"}}},
        {"$defs": {"a": {"$dynamicRef": f"{listener.url}/d.json"}}, "$ref": "#/$defs/a"},
        {"$id": f"{listener.url}/base/", "properties": {"x": {"$ref": "relative.json"}}},
        {"properties": {"x": {"$id": f"{listener.url}/nested.json", "type": "string"}}},
        {"allOf": [{"$ref": f"{listener.url}/all.json"}]},
    ]
    for schema in schemas:
        error = error_of(create_eval(client, schema))
        assert error["param"].endswith("item_schema"), error
        assert SECRET not in error["message"] and "root:" not in error["message"]
    assert listener.hits == []


def test_unresolvable_local_references_are_400_not_500(client: httpx.Client) -> None:
    for schema in (
        {"$ref": "#/nope"},
        {"$ref": "#/$defs/missing"},
        {"$ref": "#no-such-anchor"},
        {"properties": {"a": {"$ref": "#/properties/b"}}},
    ):
        error = error_of(create_eval(client, schema))
        assert "does not resolve" in error["message"] and error["param"].endswith("item_schema")


def test_references_into_the_schema_itself_work(client: httpx.Client) -> None:
    schema = {
        "$id": "https://example.com/item.json",
        "$defs": {"text": {"type": "string", "minLength": 1}},
        "type": "object",
        "properties": {"question": {"$ref": "#/$defs/text"}, "expected": {"$ref": "#/$defs/text"}},
        "required": ["expected"],
    }
    created = create_eval(client, schema).json()
    good = {"item": {"question": "q", "expected": "a"}, "sample": {"output_text": "a"}}
    assert jsonl_run(client, created["id"], inline(good)).status_code == 200
    error = error_of(jsonl_run(client, created["id"], inline({**good, "item": {"expected": ""}})))
    assert "does not match the eval's item schema" in error["message"]


def test_a_stored_schema_is_held_to_the_rules_when_a_run_starts(listener: Served) -> None:
    """An eval stored before these rules keeps its schema; a run of it is refused, and nothing is fetched."""
    body = RunCreate.model_validate({"data_source": {"type": "jsonl", "source": inline({"item": {}})}})
    stored = {"properties": {"a": {"$ref": f"{listener.url}/stored.json"}}}
    workers = Workers(1)
    try:
        with pytest.raises(InvalidRequestError) as refused:
            asyncio.run(checked_items(body, cast(FileStore, None), workers, "tenant-x", stored))
    finally:
        workers.close()
    assert refused.value.param == "eval_id" and "points outside the schema" in refused.value.message
    assert listener.hits == []


# -- regexes on RE2 --------------------------------------------------------------------------------------------------


def test_a_catastrophic_pattern_runs_in_linear_time(gateway: Gateway, client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"expected": {"type": "string", "pattern": CATASTROPHIC}},
        "patternProperties": {CATASTROPHIC: {"type": "string"}},
        "propertyNames": {"pattern": "^[a-z]+$"},
    }
    created = create_eval(client, schema).json()
    sample = {"output_text": "x"}
    hostile = [{"item": {"expected": HOSTILE_TEXT}, "sample": sample} for _ in range(4)]
    with health_probe(gateway.base) as latencies:
        started = time.monotonic()
        error = error_of(jsonl_run(client, created["id"], inline(*hostile)))
        elapsed = time.monotonic() - started
    assert "does not match" in error["message"] and elapsed < 10
    assert max(latencies, default=0) < STALL_BOUND_S
    fine = {"item": {"expected": "aaaa"}, "sample": sample}
    assert jsonl_run(client, created["id"], inline(fine)).status_code == 200


def test_patterns_re2_cannot_run_are_refused(client: httpx.Client) -> None:
    for schema in (
        {"properties": {"a": {"type": "string", "pattern": r"(a)\1"}}},
        {"patternProperties": {"(?=x)": {}}},
        {"properties": {"a": {"pattern": "(a{1000}){1000}"}}},
        {"patternProperties": {"^a": {}}, "unevaluatedProperties": False},
        {"properties": {"a": {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": CATASTROPHIC}}},
    ):
        error = error_of(create_eval(client, schema))
        assert error["param"].endswith("item_schema"), error


def test_additional_properties_beside_pattern_properties_use_re2() -> None:
    schema = documents.check_schema({"patternProperties": {CATASTROPHIC: {}}, "additionalProperties": False})
    started = time.monotonic()
    problem = documents.validate_items(schema, [{"a" * 50_000 + "!": 1}], seconds=5)
    assert problem is not None and "not allowed" in problem[1]
    assert documents.validate_items(schema, [{"aaa": 1}], seconds=5) is None
    assert time.monotonic() - started < 5


def test_validation_that_multiplies_stops_at_its_budget() -> None:
    branch = {"type": "array", "items": {"$ref": "#/$defs/node"}}
    schema = documents.check_schema(
        {"$defs": {"node": {"anyOf": [branch, branch, {"type": "string"}]}}, "$ref": "#/$defs/node"}
    )
    deep: Any = 1
    for _ in range(30):
        deep = [deep]
    started = time.monotonic()
    with pytest.raises(documents.BudgetExceeded):
        documents.validate_items(schema, [deep], seconds=0.5)
    assert time.monotonic() - started < 5


def test_a_root_dialect_does_not_switch_validation_back_to_python_re() -> None:
    """jsonschema re-picks its validator by $schema when a $ref lands on the root: ours must stay in charge."""
    schema = documents.check_schema(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"x": {"type": "string", "pattern": CATASTROPHIC}, "r": {"$ref": "#"}},
        }
    )
    started = time.monotonic()
    problem = documents.validate_items(schema, [{"r": {"x": "a" * 27 + "!"}}], seconds=5)
    assert problem is not None and time.monotonic() - started < 1


def test_a_schema_that_refers_to_itself_forever_or_into_nothing_is_refused_not_a_500() -> None:
    assert documents.validate_items(documents.check_schema({"$ref": "#"}), [{}], seconds=5) == (
        0,
        "the schema refers to itself without end",
    )
    with pytest.raises(documents.DocumentError):
        documents.check_schema({"$ref": "#/allOf/x", "allOf": [{}]})


def _sleep_past_its_budget(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_worker_that_overruns_its_budget_is_killed_and_the_pool_serves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.workers.GRACE_SECONDS", 0.5)
    workers = Workers(1)

    async def scenario() -> None:
        assert await workers.call(_sleep_past_its_budget, 0.0, budget=30) == 0.0  # the pool is up
        overrunning = list(workers._pool._processes.values())  # type: ignore[union-attr]
        with pytest.raises(WorkTimedOut):
            await workers.call(_sleep_past_its_budget, 60.0, budget=0.1)
        deadline = time.monotonic() + 5
        while any(process.is_alive() for process in overrunning) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(process.is_alive() for process in overrunning)
        assert await workers.call(_sleep_past_its_budget, 0.0, budget=30) == 0.0  # an innocent call is served

    try:
        asyncio.run(scenario())
    finally:
        workers.close()


# -- bounds ----------------------------------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_documents_past_the_bounds_are_400s(client: httpx.Client) -> None:
    deep_schema = error_of(create_eval(client, nested(bounds.DOCUMENT_DEPTH + 5)))
    assert "nested" in deep_schema["message"]
    wide_schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(bounds.SCHEMA_NODES)}}
    assert "values" in error_of(create_eval(client, wide_schema))["message"]
    body = '{"data_source_config": ' + "[" * 5_000 + "]" * 5_000 + "}"
    response = client.post("/v1/evals", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    created = create_eval(client, {"type": "object"}).json()
    sample = {"output_text": "x"}
    too_deep = error_of(
        jsonl_run(client, created["id"], inline({"item": nested(bounds.DOCUMENT_DEPTH + 5), "sample": sample}))
    )
    assert "nested" in too_deep["message"]
    line = b'{"item": ' + b"[" * 5_000 + b"]" * 5_000 + b"}\n"
    file_id = upload(client, line).json()["id"]
    error = error_of(jsonl_run(client, created["id"], {"type": "file_id", "id": file_id}))
    assert error["param"] == "data_source.source.id" and "Line 1" in error["message"]


def test_items_are_checked_as_they_stream_and_refused_early(gateway: Gateway, client: httpx.Client) -> None:
    created = create_eval(client, {"type": "object", "required": ["expected"]}).json()
    source = lambda content: {"type": "file_id", "id": upload(client, content).json()["id"]}  # noqa: E731
    tiny = b'{"item": {"expected": "a"}, "sample": {"output_text": "a"}}\n'
    count = 4 * 1024 * 1024 // len(tiny)  # 4 MiB of tiny items, far past the count bound
    many = source(tiny * count)
    wide = source(b'{"item": {' + b",".join(b'"k%d": 0' % i for i in range(60_000)) + b"}}\n")
    bad_first = source(b'{"item": {}}\n' + tiny * 20_000)
    before = gateway.process.memory_info().rss
    assert f"at most {bounds.EVAL_RUN_ITEMS} items" in error_of(jsonl_run(client, created["id"], many))["message"]
    assert "values" in error_of(jsonl_run(client, created["id"], wide))["message"]
    assert "Line 1 does not match" in error_of(jsonl_run(client, created["id"], bad_first))["message"]
    assert gateway.process.memory_info().rss - before < 48 * 1024 * 1024


# -- grading off the event loop --------------------------------------------------------------------------------------


def test_grading_is_bounded_and_keeps_health_answering(gateway: Gateway, client: httpx.Client) -> None:
    created = create_eval(client, {"type": "object"}, [FUZZY, STRING_CHECK]).json()
    near_cap = "ab" * (bounds.GRADED_TEXT_CHARS // 2 - 10)
    entries = [
        {"item": {"expected": "b" * 250_000}, "sample": {"output_text": "a" * 250_000}},  # too long to compare
        {"item": {"expected": near_cap}, "sample": {"output_text": near_cap[::-1]}},
        {"item": {"expected": "fox"}, "sample": {"output_text": "fox"}},
    ]
    with health_probe(gateway.base) as latencies:
        run = jsonl_run(client, created["id"], inline(*entries)).json()
        done = finished(client, created["id"], run["id"])
    assert max(latencies, default=0) < STALL_BOUND_S
    assert done["result_counts"] == {"total": 3, "passed": 1, "failed": 1, "errored": 1}
    items = client.get(f"/v1/evals/{created['id']}/runs/{run['id']}/output_items?order=asc").json()["data"]
    error = items[0]["sample"]["error"]
    assert error["code"] == "input_too_long" and "Traceback" not in error["message"]
    assert "characters" in error["message"]


def test_grading_keeps_its_text_cap_and_time_budget() -> None:
    long = {"item": {"expected": "x" * (bounds.GRADED_TEXT_CHARS + 1)}, "sample": {"output_text": "x"}}
    with pytest.raises(TextTooLong):
        grade(FUZZY, long)
    assert grade(STRING_CHECK, long).passed is False  # a string check is linear: no cap
    with pytest.raises(GradingTimedOut):
        grade_item([FUZZY], {"item": {"expected": "a"}, "sample": {"output_text": "a"}}, seconds=-1)


# -- output item ids -------------------------------------------------------------------------------------------------

OUTPUT_ITEM_ID = re.compile(r"outputitem_[0-9a-f]{24}[0-9a-f]+")


def test_output_item_ids_are_unguessable_and_stored_lookups_work(database: Database) -> None:
    evals = EvalService(database)
    tenant = TenancyService(database).create_tenant(TenantCreate(name="tenant-a")).id
    body = EvalCreate.model_validate(
        {"data_source_config": {"type": "custom", "item_schema": {}}, "testing_criteria": [STRING_CHECK]}
    )
    created = evals.create(tenant, body)
    run_body = RunCreate.model_validate(
        {"data_source": {"type": "jsonl", "source": inline(*[{"item": {"n": n}} for n in range(3)])}}
    )
    runs = [
        evals.create_run(tenant, "key-a", created.id, run_body, "jsonl", [({"n": n}, None) for n in range(3)])
        for _ in range(2)
    ]
    ids: list[list[str]] = []
    queue = RunQueue(database)
    for run in runs:
        assert queue.claim("runner", stale_after=30) == run.id
        for row in queue.pending(run.id):
            assert queue.record(run.id, "runner", row.id, ItemStatus.PASS, {"output_text": "x"}, [])
        ids.append([item.id for item in evals.output_items(tenant, created.id, run.id, None, 10, "asc", None).data])
    flat = [item_id for run_ids in ids for item_id in run_ids]
    assert all(OUTPUT_ITEM_ID.fullmatch(item_id) for item_id in flat) and len(set(flat)) == 6
    assert len({item_id[11:35] for item_id in flat}) == 6  # no shared prefix or counter between items and runs
    first, second = runs[0].id, runs[1].id
    assert evals.output_item(tenant, created.id, first, ids[0][1]).datasource_item_id == 1
    page = evals.output_items(tenant, created.id, first, ids[0][0], 10, "asc", None).data
    assert [item.id for item in page] == ids[0][1:]
    for wrong in (ids[1][1], ids[0][1][:-1] + "f", "outputitem_2"):  # another run's, tampered, sequential
        with pytest.raises(NotFoundError):
            evals.output_item(tenant, created.id, first, wrong)
    with pytest.raises(NotFoundError):
        evals.output_item("tenant-b", created.id, second, ids[1][0])


# -- fine-tuning files -----------------------------------------------------------------------------------------------

GOOD_CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def test_a_training_line_nested_5000_deep_is_a_400(client: httpx.Client) -> None:
    line = b'{"messages": ' + b"[" * 5_000 + b"]" * 5_000 + b"}\n"
    with pytest.raises(DatasetError, match="nested too deeply"):
        check_jsonl(io.BytesIO(line))
    error = error_of(upload(client, GOOD_CHAT + line, "fine-tune", "train.jsonl"))
    assert error["code"] == "invalid_file_format" and "line 2" in error["message"]


def test_a_job_over_a_large_training_file_does_not_stall_the_gateway(gateway: Gateway, client: httpx.Client) -> None:
    example = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "hello there " * 400},
                {"role": "assistant", "content": "fine " * 400},
            ]
        }
    ).encode()
    big = json.dumps(
        {"messages": [{"role": "user", "content": "word " * 200_000}, {"role": "assistant", "content": "x"}]}
    )
    content = big.encode() + b"\n" + (example + b"\n") * (4 * 1024 * 1024 // len(example))
    file_id = upload(client, content, "fine-tune", "train.jsonl").json()["id"]
    with health_probe(gateway.base) as latencies:
        job = client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id})
    assert job.status_code in (200, 429), job.text  # a budget may refuse it; the estimate ran either way
    assert max(latencies, default=0) < STALL_BOUND_S


def test_the_token_estimate_never_holds_the_event_loop_for_long(model_dir: Path) -> None:
    """The real tokenizer holds the GIL for a whole call: a megabyte-long example, encoded whole, froze the loop
    for seconds; encoded a piece at a time, the loop keeps running, and the estimate hardly moves."""
    tokenizer = HFTokenizer(model_dir)
    text = "word " * 200_000
    examples = [ChatExample((Message("user", text), Message("assistant", "x")))] * 2

    async def longest_gap() -> tuple[float, tuple[int, int]]:
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        estimate = await run_in_threadpool(estimate_tokens, tokenizer, examples)
        ticker.cancel()
        return max(gaps), estimate

    gap, (count, tokens) = asyncio.run(longest_gap())
    assert gap < STALL_BOUND_S
    whole = len(
        tokenizer.encode(
            tokenizer.render_chat([{"role": "user", "content": text}, {"role": "assistant", "content": "x"}])
        )
    )
    assert count == 2 and abs(tokens - 2 * whole) <= 0.01 * 2 * whole
