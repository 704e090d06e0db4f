"""The Batch API (``/v1/batches``) through the official ``openai`` client: the lifecycle on the fake engine and
on the real models over HTTP (chat, completions and embeddings: the routes' answers), the output and error files,
the ledger against the output file's usage (kind ``batch``, at the batch price, outside the RPM window), malformed
lines named (embeddings lines too), other tenants' 404s, cancel, the per-tenant limits, and a gateway SIGKILLed
mid-batch whose batch another gateway resumes (nothing run twice, nothing lost)."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import create_engine, text

from engine.fake import FakeEngine
from engine.settings import DEFAULT_EMBEDDING_MODEL_ID
from tests.support import ADMIN_KEY
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import fake_gateway
from tests.support.in_process import InProcessGateway
from tests.support.tenants import openai_client, tenant_key

FINAL = ("completed", "failed", "expired", "cancelled")
PRICES = {"fake": {"input": "2", "output": "4"}}


def chat_line(custom_id: str, content: str = "Say hi", model: str = "fake", **body: Any) -> dict[str, Any]:
    request = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 5, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}


def embeddings_line(custom_id: str, model: str = DEFAULT_EMBEDDING_MODEL_ID, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {"model": model, **body}}


def upload(client: openai.OpenAI, lines: list[Any]) -> str:
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return client.files.create(file=("batch.jsonl", data), purpose="batch").id


def create(client: openai.OpenAI, lines: list[Any], endpoint: Any = "/v1/chat/completions") -> Any:
    return client.batches.create(
        input_file_id=upload(client, lines), endpoint=endpoint, completion_window="24h", metadata={"run": "test"}
    )


def wait_for(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            assert batch.status in statuses, batch
            return batch
        time.sleep(0.2)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def ledger(database_url: str, tenant_id: str, count: int, timeout: float = 30) -> dict[str, tuple[int, int, Decimal]]:
    """The tenant's ``batch`` usage records by request id, once there are ``count`` of them."""
    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT request_id, prompt_tokens, completion_tokens, cost FROM usage_records "
                        "WHERE tenant_id = :t AND kind = 'batch'"
                    ),
                    {"t": tenant_id},
                ).all()
            if len(rows) >= count or time.monotonic() > deadline:
                return {row[0]: (row[1], row[2], Decimal(str(row[3]))) for row in rows}
            time.sleep(0.2)
    finally:
        engine.dispose()


def stored_results(database_url: str, batch_id: str) -> dict[str, Any]:
    """When each stored result of the batch was stored, by custom id."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT custom_id, finished_at FROM batch_requests WHERE batch_id = :b AND status != 'pending'"),
                {"b": batch_id},
            ).all()
    finally:
        engine.dispose()
    return {row[0]: row[1] for row in rows}


def check_ledger_matches(database_url: str, tenant_id: str, output: list[dict[str, Any]]) -> None:
    """One ``batch`` record per answered request, under its request id, with the output's usage."""
    records = ledger(database_url, tenant_id, len(output))
    assert len(records) == len(output)
    for line in output:
        usage = line["response"]["body"]["usage"]
        prompt, completion, _ = records[line["response"]["request_id"]]
        assert (prompt, completion) == (usage["prompt_tokens"], usage["completion_tokens"])


def test_a_batch_runs_to_completion_at_the_batch_price_outside_the_rate_window(
    in_process: Callable[..., InProcessGateway], tmp_path: Path
) -> None:
    gateway = in_process(default_model_prices=PRICES, batch_price_fraction="0.5")
    tenant_id, _, client = gateway.tenant(requests_per_minute=2)  # 2 RPM: the upload and the creation
    batch = create(client, [chat_line(f"req-{i}", f"Question {i}") for i in range(3)])
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 3
    assert batch.model == "fake" and batch.metadata == {"run": "test"} and batch.completion_window == "24h"

    done = wait_for(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.error_file_id is None
    output = lines_of(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["req-0", "req-1", "req-2"]
    for line in output:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    usage = done.usage
    assert usage is not None
    assert usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)

    database_url = f"sqlite:///{tmp_path / 'llmaas.db'}"
    check_ledger_matches(database_url, tenant_id, output)
    for prompt, completion, cost in ledger(database_url, tenant_id, 3).values():
        full = (Decimal(prompt) * 2 + Decimal(completion) * 4) / 1_000_000
        assert cost == full / 2  # the batch price: half the model's

    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [batch.id]


def test_a_batch_on_the_real_model_answers_as_the_routes_do(server: str, server_data_dir: Path) -> None:
    tenant_id, key = tenant_key(server, "batch")
    client = openai_client(server, key)
    model = client.models.list().data[0].id
    question = {"temperature": 0, "max_tokens": 8}
    lines = [chat_line("capital", "What is the capital of France?", model, **question), chat_line("hi", "Hi!", model)]
    done = wait_for(client, create(client, lines).id, timeout=300)
    assert done.status == "completed" and done.request_counts.completed == 2, done  # type: ignore[union-attr]
    output = {line["custom_id"]: line for line in lines_of(client, done.output_file_id)}
    answer = output["capital"]["response"]["body"]["choices"][0]["message"]["content"]
    direct = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], **question
    )
    assert answer == direct.choices[0].message.content and "Paris" in answer
    check_ledger_matches(f"sqlite:///{server_data_dir / 'llmaas.db'}", tenant_id, list(output.values()))

    completions = [
        {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": model, "prompt": "1, 2, 3,"}}
    ]
    done = wait_for(client, create(client, completions, "/v1/completions").id, timeout=300)
    [line] = lines_of(client, done.output_file_id)
    assert line["response"]["body"]["object"] == "text_completion"


def test_a_batch_of_embeddings_answers_the_routes_vectors_at_the_batch_price(
    server: str, server_data_dir: Path
) -> None:
    prices = {DEFAULT_EMBEDDING_MODEL_ID: {"input": "2", "output": "4"}}
    tenant_id, key = tenant_key(server, "batch-embeddings", model_prices=prices)
    client = openai_client(server, key)
    inputs: dict[str, Any] = {
        "one": "The cat sits on the mat.",
        "many": ["A dog runs.", "Quantum computers use qubits."],
    }
    lines = [embeddings_line(custom_id, input=value) for custom_id, value in inputs.items()]
    done = wait_for(client, create(client, lines, "/v1/embeddings").id, timeout=300)
    assert done.status == "completed" and done.request_counts.completed == 2, done  # type: ignore[union-attr]
    output = {line["custom_id"]: line for line in lines_of(client, done.output_file_id)}
    for custom_id, value in inputs.items():
        body = output[custom_id]["response"]["body"]
        direct = client.embeddings.create(model=DEFAULT_EMBEDDING_MODEL_ID, input=value)
        assert body["object"] == "list" and body["model"] == DEFAULT_EMBEDDING_MODEL_ID
        assert [item["index"] for item in body["data"]] == [item.index for item in direct.data]
        for item, expected in zip(body["data"], direct.data, strict=True):
            assert item["object"] == "embedding" and item["embedding"] == pytest.approx(expected.embedding, abs=1e-5)
        assert body["usage"] == {"prompt_tokens": direct.usage.prompt_tokens, "total_tokens": direct.usage.total_tokens}
    assert done.usage is not None and done.usage.output_tokens == 0  # type: ignore[union-attr]

    records = ledger(f"sqlite:///{server_data_dir / 'llmaas.db'}", tenant_id, len(output))
    assert len(records) == len(output)
    for line in output.values():
        prompt, completion, cost = records[line["response"]["request_id"]]
        assert (prompt, completion) == (line["response"]["body"]["usage"]["prompt_tokens"], 0)
        assert cost == Decimal(prompt) * 2 / 1_000_000 / 2  # the batch price: half the model's


def test_malformed_lines_fail_the_batch_naming_each_line(in_process: Callable[..., InProcessGateway]) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    lines: list[Any] = [
        chat_line("ok"),
        "{not json",
        chat_line("ok"),  # the same custom_id again
        {**chat_line("url"), "url": "/v1/completions"},
        {**chat_line("method"), "method": "GET"},
        chat_line("unknown", temperature_x=1),
        chat_line("stream", stream=True),
        chat_line("other-model", model="nope"),
    ]
    batch = create(client, lines)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None and batch.errors.data is not None
    named = {(error.line, error.code) for error in batch.errors.data}
    assert named == {
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_url"),
        (5, "invalid_method"),
        (6, "unknown_parameter"),
        (7, "invalid_request"),
        (8, "mismatched_model"),
    }
    assert {e.param for e in batch.errors.data if e.line == 6} == {"body.temperature_x"}

    unknown_model = create(client, [chat_line("a", model="nope")])
    assert unknown_model.status == "failed"
    assert unknown_model.errors and [(e.line, e.param) for e in unknown_model.errors.data or []] == [(1, "body.model")]
    empty = create(client, [""])
    assert empty.status == "failed" and empty.errors and (empty.errors.data or [])[0].code == "empty_file"

    not_batch = client.files.create(file=("x.jsonl", b"{}\n"), purpose="user_data").id
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=not_batch, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=upload(client, []), endpoint="/v1/images", completion_window="24h")  # type: ignore[arg-type]


def test_malformed_embeddings_lines_are_named(in_process: Callable[..., InProcessGateway]) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    lines: list[Any] = [
        embeddings_line("ok", input="hello"),
        embeddings_line("empty", input=[]),
        embeddings_line("format", input="hi", encoding_format="int8"),
        embeddings_line("stream", input="hi", stream=True),
        chat_line("chat"),  # a chat line in an embeddings batch
    ]
    batch = create(client, lines, "/v1/embeddings")
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    named = {(error.line, error.param) for error in batch.errors.data}
    assert named == {(2, "body.input"), (3, "body.encoding_format"), (4, "body.stream"), (5, "url")}

    chat_model = create(client, [embeddings_line("a", model="fake", input="hi")], "/v1/embeddings")
    assert chat_model.status == "failed" and chat_model.errors is not None
    assert [(e.line, e.param) for e in chat_model.errors.data or []] == [(1, "body.model")]


def test_other_tenants_get_404s(in_process: Callable[..., InProcessGateway]) -> None:
    gateway = in_process()
    _, _, owner = gateway.tenant("owner")
    _, _, other = gateway.tenant("other")
    batch = create(owner, [chat_line("a")])
    done = wait_for(owner, batch.id)
    for call in (
        lambda: other.batches.retrieve(batch.id),
        lambda: other.batches.cancel(batch.id),
        lambda: other.files.content(done.output_file_id or ""),
        lambda: other.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        lambda: other.batches.list(after=batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.batches.list().data == []


def running_batch(in_process: Callable[..., InProcessGateway]) -> tuple[openai.OpenAI, Any, str]:
    """A batch of 20 slow requests (2 s each, 2 at a time) with a few answered; its tenant's id."""
    gateway = in_process(engine=FakeEngine(seconds_per_token=0.05), batch_concurrency=2, batch_lease_seconds=1.5)
    tenant_id, _, client = gateway.tenant()
    batch = create(client, [chat_line(f"r{i}", max_tokens=40) for i in range(20)])
    wait_for(client, batch.id, ("in_progress",))
    time.sleep(2.5)
    return client, batch, tenant_id


def check_stopped(client: openai.OpenAI, done: Any, code: str, database_url: str, tenant_id: str) -> None:
    """Some requests answered, the rest in the error file with ``code``, within seconds; billed for the answered
    ones alone (the requests its stop cut off in flight cost nothing)."""
    counts = done.request_counts
    assert counts and counts.total == 20 and counts.completed + counts.failed == 20 and 0 < counts.completed < 20
    assert {line["error"]["code"] for line in lines_of(client, done.error_file_id)} == {code}
    answered = [line["response"]["body"]["usage"] for line in lines_of(client, done.output_file_id)]
    assert len(answered) == counts.completed
    ledger(database_url, tenant_id, counts.completed + 2)  # the two cut off in flight are recorded too
    billed = ledger(database_url, tenant_id, 0).values()
    assert sum(p + c for p, c, _ in billed) == sum(u["prompt_tokens"] + u["completion_tokens"] for u in answered)


def test_cancel_stops_a_running_batch_within_seconds(
    in_process: Callable[..., InProcessGateway], tmp_path: Path
) -> None:
    client, batch, tenant_id = running_batch(in_process)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    started = time.monotonic()
    done = wait_for(client, batch.id, ("cancelled",), timeout=15)
    assert time.monotonic() - started < 5 and done.cancelled_at
    check_stopped(client, done, "batch_cancelled", f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(create_and_finish(client).id)


def test_a_batch_past_its_window_expires_within_seconds(
    in_process: Callable[..., InProcessGateway], tmp_path: Path
) -> None:
    client, batch, tenant_id = running_batch(in_process)
    engine = create_engine(f"sqlite:///{tmp_path / 'llmaas.db'}")
    with engine.begin() as conn:  # as if 24 hours had gone by
        conn.execute(
            text("UPDATE batches SET expires_at = '2000-01-01 00:00:00.000000' WHERE id = :b"), {"b": batch.id}
        )
    engine.dispose()
    started = time.monotonic()
    done = wait_for(client, batch.id, ("expired",), timeout=15)
    assert time.monotonic() - started < 5 and done.expired_at
    check_stopped(client, done, "batch_expired", f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id)


def create_and_finish(client: openai.OpenAI) -> Any:
    return wait_for(client, create(client, [chat_line("one", max_tokens=1)]).id)


def test_batch_limits_per_tenant_set_by_the_admin_api(in_process: Callable[..., InProcessGateway]) -> None:
    gateway = in_process(default_max_batch_requests=3)
    tenant_id, _, client = gateway.tenant()
    too_many = create(client, [chat_line(f"r{i}") for i in range(4)])
    assert too_many.status == "failed"
    assert [(e.code, e.line) for e in too_many.errors.data or []] == [("too_many_requests", 4)]  # type: ignore[union-attr]

    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    changed = gateway.http.patch(
        f"/admin/v1/tenants/{tenant_id}",
        json={"max_batch_requests": 10, "max_enqueued_batch_tokens": 50},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["max_batch_requests"] == 10
    tokens = create(client, [chat_line(f"r{i}") for i in range(4)])
    assert tokens.status == "failed"
    assert [e.code for e in tokens.errors.data or []] == ["token_limit_exceeded"]  # type: ignore[union-attr]


def test_a_tenants_batches_are_exported_and_erased_with_it(
    in_process: Callable[..., InProcessGateway], tmp_path: Path
) -> None:
    gateway = in_process()
    tenant_id, _, client = gateway.tenant()
    done = wait_for(client, create(client, [chat_line("a"), chat_line("b")]).id)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    archive = gateway.http.get(f"/admin/v1/tenants/{tenant_id}/export", headers=admin)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        batches = tar.extractfile("batches/batches.jsonl").read().splitlines()  # type: ignore[union-attr]
        requests = tar.extractfile("batches/requests.jsonl").read().splitlines()  # type: ignore[union-attr]
    assert [json.loads(line)["id"] for line in batches] == [done.id] and len(requests) == 2

    deleted = gateway.http.delete(f"/admin/v1/tenants/{tenant_id}", headers=admin)
    assert deleted.status_code == 200 and deleted.json()["removed"]["batches"] == 1
    engine = create_engine(f"sqlite:///{tmp_path / 'llmaas.db'}")
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM batch_requests WHERE batch_id = :b"), {"b": done.id}).scalar()
        files = conn.execute(text("SELECT count(*) FROM files WHERE id = :f"), {"f": done.output_file_id}).scalar()
    engine.dispose()
    assert (left, files) == (0, 0)
    assert not (tmp_path / "files" / str(done.output_file_id)).exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_gateway_killed_mid_batch_is_resumed_by_another_nothing_twice_nothing_lost(
    tmp_path: Path, backend: str
) -> None:
    with ExitStack() as stack:
        if backend == "sqlite":
            database_url = f"sqlite:///{tmp_path / 'llmaas.db'}"
        else:
            database_url = stack.enter_context(fresh_postgres_database("llmaas_batches"))
        killed_and_resumed(tmp_path, database_url, {"database_url": database_url} if backend != "sqlite" else {})


def killed_and_resumed(tmp_path: Path, database_url: str, database: dict[str, Any]) -> None:
    settings: dict[str, Any] = {**database, "batch_lease_seconds": 2, "batch_concurrency": 2, "log_level": "warning"}
    first = fake_gateway(tmp_path, seconds_per_token=0.02, **settings)
    first.start()
    try:
        tenant_id, key = tenant_key(first.base)
        client = openai_client(first.base, key)
        model = client.models.list().data[0].id
        batch = create(client, [chat_line(f"r{i}", model=model, max_tokens=20) for i in range(30)])
        deadline = time.monotonic() + 60
        while client.batches.retrieve(batch.id).request_counts.completed < 6:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
    finally:
        first.stop()
    stored_before = stored_results(database_url, batch.id)
    assert 6 <= len(stored_before) < 30
    with fake_gateway(tmp_path, seconds_per_token=0.02, log=tmp_path / "second.log", **settings) as second:
        client = openai_client(second.base, key)
        done = wait_for(client, batch.id, timeout=120)
        assert done.status == "completed" and done.request_counts.completed == 30  # type: ignore[union-attr]
        output = lines_of(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"r{i}" for i in range(30))
        check_ledger_matches(database_url, tenant_id, output)
        assert len(ledger(database_url, tenant_id, 30)) == 30
    stored_after = stored_results(database_url, batch.id)
    assert {custom_id: stored_after[custom_id] for custom_id in stored_before} == stored_before  # not run again
