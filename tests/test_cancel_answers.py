"""Answers a script can trust: a cancel's answer and the next retrieve agree, for fine-tuning jobs, eval runs and
batches, with the official ``openai`` client against two gateway processes on one PostgreSQL (the cancel sent to
one, the retrieve to the other; the instant fake engine, slowed, stands in for vLLM). Each object keeps OpenAI's
spelling: ``cancelled`` jobs and batches (a running batch is ``cancelling`` until its runner stops, as OpenAI's),
``canceled`` eval runs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    text,
)

from gateway.db import Database
from tests.finetune_data import pirate_jsonl
from tests.support import MODEL
from tests.support.databases import fresh_postgres_database, ledger_rows
from tests.support.evals import ITEMS, completions_source, make_eval
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import openai_client, tenant_key


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """Two gateways on one database (their bases) and the database's URL."""
    data_dir = tmp_path_factory.mktemp("cancel")
    with fresh_postgres_database("llmaas_cancel") as url:
        settings: dict[str, Any] = {"database_url": url, "batch_concurrency": 2, "batch_lease_seconds": 1.5}
        with (
            fake_gateway(data_dir, seconds_per_token=0.05, log=data_dir / "a.log", **settings) as a,
            fake_gateway(data_dir, seconds_per_token=0.05, log=data_dir / "b.log", **settings) as b,
        ):
            yield a.base, b.base, url


def clients(gateways: tuple[str, str, str], **quotas: Any) -> tuple[openai.OpenAI, openai.OpenAI]:
    """One tenant's official client on each gateway."""
    a, b, _ = gateways
    _, key = tenant_key(a, **quotas)
    return openai_client(a, key), openai_client(b, key)


def until(read: Any, statuses: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (found := read()).status not in statuses:
        assert time.monotonic() < deadline, found.status
        time.sleep(0.2)
    return found


def test_a_running_jobs_cancel_answers_cancelled_and_the_other_gateway_agrees(
    gateways: tuple[str, str, str],
) -> None:
    one, other = clients(gateways)
    training_file = one.files.create(file=("pirate.jsonl", pirate_jsonl()), purpose="fine-tune")
    queued = one.fine_tuning.jobs.create(model=MODEL, training_file=training_file.id)
    answer = other.fine_tuning.jobs.cancel(queued.id)
    assert answer.status == "cancelled" and answer.finished_at is not None
    assert one.fine_tuning.jobs.retrieve(queued.id) == answer

    running = one.fine_tuning.jobs.create(model=MODEL, training_file=training_file.id)
    engine = create_engine(gateways[2])
    with engine.begin() as conn:  # a worker claimed it and trains it (no worker runs beside these gateways)
        conn.execute(
            text(
                "UPDATE fine_tuning_jobs SET status = 'running', worker_id = 'w1', heartbeat_at = now(), "
                "started_at = now(), trained_tokens = 120 WHERE id = :id"
            ),
            {"id": running.id},
        )
    engine.dispose()
    answer = other.fine_tuning.jobs.cancel(running.id)
    assert answer.status == "cancelled" and answer.trained_tokens == 120  # charged what it trained
    assert one.fine_tuning.jobs.retrieve(running.id) == answer == other.fine_tuning.jobs.retrieve(running.id)
    with pytest.raises(openai.BadRequestError):
        one.fine_tuning.jobs.cancel(running.id)


def test_an_eval_runs_cancel_answers_canceled_and_the_other_gateway_agrees(gateways: tuple[str, str, str]) -> None:
    one, other = clients(gateways, max_concurrent_requests=1, requests_per_minute=5)
    created = make_eval(one)
    content = [{"item": ITEMS[0]}] * 50  # 5 requests a minute: this run would take ten minutes
    source = completions_source({"type": "file_content", "content": content})
    run = one.evals.runs.create(created.id, data_source=source)
    until(lambda: one.evals.runs.retrieve(run.id, eval_id=created.id), {"in_progress"})
    answer = other.evals.runs.cancel(run.id, eval_id=created.id)
    assert answer.status == "canceled"
    assert one.evals.runs.retrieve(run.id, eval_id=created.id).model_dump() == answer.model_dump()


def test_an_eval_runs_cancel_aborts_its_samples_in_flight(gateways: tuple[str, str, str]) -> None:
    """Samples running when a run is cancelled stop within the runner's heartbeat (3 s), billed as requests left,
    instead of running on to their end (400 tokens each, 20 s at this engine's speed)."""
    a, b, url = gateways
    tenant_id, key = tenant_key(a)
    one, other = openai_client(a, key), openai_client(b, key)
    created = make_eval(one)
    source = completions_source({"type": "file_content", "content": [{"item": ITEMS[0]}] * 4}, max_tokens=400)
    run = one.evals.runs.create(created.id, data_source=source)
    until(lambda: one.evals.runs.retrieve(run.id, eval_id=created.id), {"in_progress"})
    time.sleep(1)
    cancelled_at = time.monotonic()
    answer = other.evals.runs.cancel(run.id, eval_id=created.id)
    deadline = cancelled_at + 8
    while len(rows := ledger_rows(url, tenant_id, kind="eval")) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [outcome for *_, outcome in rows] == ["aborted"] * 4, rows
    assert all(completion < 400 for _, _, completion, _ in rows), rows  # an answer no one received: what was delivered
    assert answer.result_counts.passed + answer.result_counts.failed + answer.result_counts.errored == 0
    assert one.evals.runs.retrieve(run.id, eval_id=created.id).model_dump() == answer.model_dump()


def chat_line(custom_id: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 40}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_a_batchs_cancel_answers_what_the_other_gateway_shows_until_it_is_cancelled(
    gateways: tuple[str, str, str],
) -> None:
    one, other = clients(gateways)
    lines = "".join(json.dumps(chat_line(f"r{i}")) + "\n" for i in range(20))  # 2 s each, 2 at a time
    batch_file = one.files.create(file=("batch.jsonl", lines.encode()), purpose="batch")
    batch = one.batches.create(input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h")
    until(lambda: one.batches.retrieve(batch.id), {"in_progress"})
    answer = other.batches.cancel(batch.id)
    assert answer.status in ("cancelling", "cancelled") and answer.cancelling_at is not None
    retrieved = one.batches.retrieve(batch.id)
    assert retrieved.cancelling_at == answer.cancelling_at
    assert retrieved.status == answer.status or (answer.status, retrieved.status) == ("cancelling", "cancelled")
    done = until(lambda: other.batches.retrieve(batch.id), {"cancelled"}, timeout=15)
    assert one.batches.retrieve(batch.id).status == "cancelled" and done.cancelled_at is not None


def test_a_cancel_asked_before_the_upgrade_is_final_after_it(tmp_path: Path) -> None:
    """Migration 0019 drops the flag old workers polled: a job whose cancel was asked but not yet honoured ends
    ``cancelled`` (and unsettled, for the gateway's sweep to charge), other jobs as they were."""
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    database.migrate("0016")
    filler = {String: "x", Integer: 0, BigInteger: 0, JSON: {}, DateTime: datetime(2026, 12, 1), Boolean: False}
    with database.session() as session:
        jobs = Table("fine_tuning_jobs", MetaData(), autoload_with=session.connection())  # as it was then
        required = {
            c.name: next(v for t, v in filler.items() if isinstance(c.type, t))
            for c in jobs.c
            if not c.nullable and c.server_default is None
        }
        rows = {"ftjob-asked": ("running", True), "ftjob-queued": ("queued", True), "ftjob-kept": ("running", False)}
        rows |= {"ftjob-done": ("succeeded", True)}
        session.execute(
            insert(jobs),
            [{**required, "id": i, "status": s, "cancel_requested": asked} for i, (s, asked) in rows.items()],
        )
    database.migrate()
    with database.session() as session:
        after = {row.id: row for row in session.execute(text("SELECT * FROM fine_tuning_jobs"))}
    database.dispose()
    assert {i: row.status for i, row in after.items()} == {
        "ftjob-asked": "cancelled",
        "ftjob-queued": "cancelled",
        "ftjob-kept": "running",
        "ftjob-done": "succeeded",
    }
    assert after["ftjob-asked"].finished_at is not None and after["ftjob-asked"].settled_at is None
    assert after["ftjob-kept"].finished_at is None
