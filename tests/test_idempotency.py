"""``Idempotency-Key`` on the create routes: the key store on SQLite and PostgreSQL (claim, replay, reuse with
another request, a claim in flight, a failed create giving its key back, expiry, an abandoned claim taken over,
erasure with the tenant), then the official client (which sends no key of its own: ``extra_headers``) against the
app on both databases: a retried upload, fine-tuning job, eval and eval run each create once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from sqlalchemy import func, select, update

from gateway.db import Database, IdempotencyKey
from gateway.errors import ConflictError, UnprocessableContent
from gateway.idempotency import IN_FLIGHT_SECONDS, IdempotencyStore, IdempotentCreate, Replay, erase_tenant_keys
from tests.support import ADMIN_KEY
from tests.support.databases import fresh_postgres_database
from tests.support.in_process import InProcessGateway, in_process_gateway

KEY = ("tenant-a", "POST /v1/evals", "key-1")
DEFINITION: dict[str, Any] = {
    "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
    "testing_criteria": [
        {"type": "string_check", "name": "x", "input": "{{item.a}}", "reference": "b", "operation": "eq"}
    ],
}
GOOD_CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


class Made(BaseModel):
    id: str


def _age(database: Database, seconds: float) -> None:
    with database.session() as session:
        session.execute(
            update(IdempotencyKey).values(created_at=IdempotencyKey.created_at - timedelta(seconds=seconds))
        )


def _count(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0)


def test_a_key_is_claimed_once_then_replays_its_answer(database: Database) -> None:
    store = IdempotencyStore(database, retention_hours=24)
    assert store.claim(*KEY, "digest") is None
    with pytest.raises(ConflictError) as in_flight:
        store.claim(*KEY, "digest")
    assert in_flight.value.code == "idempotency_key_in_use" and in_flight.value.headers["retry-after"] == "1"
    store.complete(*KEY, 200, {"id": "eval-1"})
    assert store.claim(*KEY, "digest") == Replay(200, {"id": "eval-1"})
    with pytest.raises(UnprocessableContent) as reused:
        store.claim(*KEY, "another digest")
    assert (reused.value.status_code, reused.value.code) == (422, "idempotency_key_reused")
    assert store.claim("tenant-b", KEY[1], KEY[2], "digest") is None  # keys are per tenant
    assert store.claim(KEY[0], "POST /v1/files", KEY[2], "digest") is None  # and per endpoint


def test_a_failed_create_gives_its_key_back_and_an_abandoned_claim_is_taken_over(database: Database) -> None:
    store = IdempotencyStore(database, retention_hours=24)
    assert store.claim(*KEY, "digest") is None
    store.release(*KEY)
    assert store.claim(*KEY, "digest") is None  # free again: the retry runs
    _age(database, IN_FLIGHT_SECONDS + 1)  # its process died before answering
    assert store.claim(*KEY, "digest") is None
    with pytest.raises(ConflictError):
        store.claim(*KEY, "digest")  # taken over just now: in flight again


async def test_a_create_whose_client_leaves_still_finishes_and_stores_its_answer(database: Database) -> None:
    store = IdempotencyStore(database, retention_hours=24)
    finished = asyncio.Event()

    async def slow_create() -> Made:
        await asyncio.sleep(0.3)
        finished.set()
        return Made(id="eval-1")

    leaving = asyncio.ensure_future(IdempotentCreate(store, KEY, "digest").once(slow_create))
    await asyncio.sleep(0.1)
    leaving.cancel()  # the client disconnected mid-create
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(finished.wait(), 5)
    await asyncio.sleep(0.2)  # its answer is stored in a worker thread
    replay = store.claim(*KEY, "digest")  # the retry gets what the first create made, and makes nothing
    assert replay == Replay(200, {"id": "eval-1"})


def test_keys_expire_after_the_retention_and_go_with_their_tenant(database: Database) -> None:
    store = IdempotencyStore(database, retention_hours=1)
    store.claim(*KEY, "digest")
    store.complete(*KEY, 200, {"id": "eval-1"})
    store.claim("tenant-b", *KEY[1:], "digest")
    _age(database, 3601)
    assert store.claim(*KEY, "a new request") is None  # expired: the key is free for a new request
    assert _count(database) == 1  # the other expired key was deleted too
    with database.session() as session:
        assert erase_tenant_keys(session, KEY[0]) == 1
    assert _count(database) == 0


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InProcessGateway]:
    """The app on the fake engine (its model ``fake`` trainable) on either database."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_database()) if request.param == "postgresql" else None
        yield stack.enter_context(in_process_gateway(tmp_path, embedded_worker=False, database_url=url))


def _key(value: str) -> dict[str, Any]:
    return {"extra_headers": {"Idempotency-Key": value}}


def _twice(create: Callable[..., Any], key: str, **arguments: Any) -> tuple[Any, Any]:
    """The create sent twice with ``key``; both raw responses."""
    return (create(**arguments, **_key(key)), create(**arguments, **_key(key)))


def test_retried_creates_through_the_official_client_create_once(gateway: InProcessGateway) -> None:
    tenant_id, _, client = gateway.tenant("idem")
    raw = client.with_raw_response
    upload = {"file": ("train.jsonl", io.BytesIO(GOOD_CHAT * 3)), "purpose": "fine-tune"}
    first, again = _twice(raw.files.create, "upload-1", **upload)
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert first.parse().id == again.parse().id and len(client.files.list().data) == 1
    file_id = first.parse().id

    first, again = _twice(raw.fine_tuning.jobs.create, "job-1", model="fake", training_file=file_id)
    assert first.parse().id == again.parse().id and len(client.fine_tuning.jobs.list().data) == 1

    definition = DEFINITION
    first, again = _twice(raw.evals.create, "eval-1", name="one", **definition)
    eval_id = first.parse().id
    assert again.parse().id == eval_id and len(client.evals.list().data) == 1
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        client.evals.create(name="another", **definition, **_key("eval-1"))  # type: ignore[arg-type]
    assert reused.value.code == "idempotency_key_reused" and reused.value.param == "Idempotency-Key"
    assert client.evals.create(name="one", **definition).id != eval_id  # no key: a new one each time

    source = {
        "type": "jsonl",
        "source": {"type": "file_content", "content": [{"item": {"a": "b"}, "sample": {"output_text": "b"}}]},
    }
    first, again = _twice(raw.evals.runs.create, "run-1", eval_id=eval_id, data_source=source)
    assert first.parse().id == again.parse().id and len(client.evals.runs.list(eval_id).data) == 1

    chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat}
    lines = io.BytesIO(json.dumps(line).encode() + b"\n")
    batch_file = client.files.create(file=("batch.jsonl", lines), purpose="batch").id
    batch = {"input_file_id": batch_file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first, again = _twice(raw.batches.create, "batch-1", **batch)
    assert first.parse().id == again.parse().id and len(client.batches.list().data) == 1

    other = gateway.tenant("idem-other")[2]
    assert other.files.create(**upload, **_key("upload-1")).id != file_id  # type: ignore[arg-type]
    database = gateway.state.idempotency._db
    assert _count(database) == 6
    deleted = gateway.http.delete(f"/admin/v1/tenants/{tenant_id}", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert deleted.status_code == 200, deleted.text
    assert _count(database) == 1  # the other tenant's key stays


@pytest.mark.parametrize("key", ["x" * 256, "tab\there", "del\x7f"])
def test_a_malformed_key_is_refused(gateway: InProcessGateway, key: str) -> None:
    client = gateway.tenant("idem-bad")[2]
    with pytest.raises(openai.BadRequestError) as refused:
        client.evals.create(**DEFINITION, extra_headers={"Idempotency-Key": key})
    assert refused.value.param == "Idempotency-Key"
