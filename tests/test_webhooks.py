"""Webhooks through the official ``openai`` client (``client.webhooks.*``): endpoints made, read, changed, rotated
and deleted in OpenAI's shapes; a signed event that ``client.webhooks.unwrap`` accepts, to a real HTTP receiver,
for a batch that completed, an eval run that succeeded, a fine-tuning job cancelled through the API and one the
worker failed; retries after 500s with exponential backoff and the same ``webhook-id``, given up after the bound;
a rotated secret (the old one kept 24 h, or not); SSRF refusals at creation and at delivery; a paused endpoint;
isolation between tenants; the bound on endpoints; a tenant's webhooks exported (no secret) and erased with it."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.webhooks import (
    BatchCompletedWebhookEvent,
    BatchFailedWebhookEvent,
    EvalRunSucceededWebhookEvent,
    FineTuningJobCancelledWebhookEvent,
    FineTuningJobFailedWebhookEvent,
)
from sqlalchemy import create_engine, text

from adapters.hyperparameters import Hyperparameters
from adapters.jobs import JobRequest, new_job_id
from adapters.recipe import LoraShape, TrainingRecipe
from adapters.registry import AdapterRegistry
from adapters.store import utcnow
from adapters.worker import Worker
from gateway.accounting.pricing import PriceBook
from gateway.app import job_hook
from gateway.db import Database
from gateway.errors import InvalidRequestError
from gateway.webhooks.destinations import CheckedResolver, Destinations
from gateway.webhooks.events import EVENT_TYPES
from gateway.webhooks.outbox import Backoff, purge_deliveries
from tests.support import ADMIN
from tests.support.databases import fresh_postgres_database
from tests.support.in_process import InProcessGateway, in_process_gateway

FAST_RETRIES: dict[str, Any] = {
    "webhook_allow_private": True,  # the receiver listens on 127.0.0.1
    "webhook_poll_seconds": 0.05,
    "webhook_retry_base_seconds": 0.4,
    "webhook_max_attempts": 3,
    "webhook_timeout_seconds": 2,
    "webhook_max_endpoints": 3,
    "webhook_tenant_concurrency": 2,
}
EQUALS_YES = {
    "type": "string_check",
    "name": "eq",
    "input": "{{sample.output_text}}",
    "reference": "yes",
    "operation": "eq",
}
JOB_EVENTS = (FineTuningJobCancelledWebhookEvent, FineTuningJobFailedWebhookEvent)
BATCH_EVENTS = ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


@dataclass
class Received:
    at: float
    """When the request arrived (monotonic); ``done``: when its answer was sent."""
    done: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers the next of ``statuses`` (then 200), after
    ``delay`` seconds."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def wait(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.received) >= count, self.received
        return self.received


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrived = time.monotonic()
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            time.sleep(state.delay)
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.received.append(Received(arrived, time.monotonic(), headers, body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            return

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=state.server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with in_process_gateway(tmp_path_factory.mktemp("webhooks"), **FAST_RETRIES) as running:
        yield running


def database_of(gateway: InProcessGateway) -> Database:
    return Database(f"sqlite:///{gateway.state.settings.data_dir / 'llmaas.db'}")


def submit_batch(client: openai.OpenAI) -> Any:
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    }
    data = (json.dumps(line) + "\n").encode()
    upload = client.files.create(file=("batch.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")


def run_batch(client: openai.OpenAI) -> Any:
    batch = submit_batch(client)
    deadline = time.monotonic() + 30
    while client.batches.retrieve(batch.id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return batch


def deliveries(client: openai.OpenAI, endpoint_id: str, statuses: tuple[str, ...], count: int = 1) -> list[Any]:
    """The endpoint's deliveries (our extension), once ``count`` of them are in one of ``statuses``."""
    deadline = time.monotonic() + 20
    while True:
        page = client.get(f"/webhook_endpoints/{endpoint_id}/deliveries", cast_to=object)
        rows: list[Any] = page["data"]  # type: ignore[index]
        if sum(row["status"] in statuses for row in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_completed_batch_is_delivered_signed_and_the_sdk_unwraps_it(
    gateway: InProcessGateway, receiver: Receiver
) -> None:
    _, _, client = gateway.tenant()
    created = client.webhooks.create(name="batches", url=receiver.url, event_types=BATCH_EVENTS)  # type: ignore[arg-type]
    assert created.object == "webhook_endpoint" and created.id.startswith("whep_")
    assert created.signing_secret.startswith("whsec_") and created.event_types == BATCH_EVENTS
    assert created.signing_secret_hint and created.signing_secret[-4:] in created.signing_secret_hint
    assert created.signing_secret not in client.webhooks.retrieve(created.id).model_dump_json()
    other = client.webhooks.create(name="jobs", url=receiver.url, event_types=["fine_tuning.job.succeeded"])

    batch = run_batch(client)
    got = receiver.wait(1)
    time.sleep(0.5)
    assert len(receiver.received) == 1  # not to the endpoint that subscribed to jobs only
    event = client.webhooks.unwrap(got[0].body, got[0].headers, secret=created.signing_secret)
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert event.data.id == batch.id and event.object == "event" and event.id.startswith("evt_")
    assert got[0].headers["webhook-id"] == event.id and got[0].headers["content-type"] == "application/json"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(got[0].body, got[0].headers, secret=other.signing_secret)

    [delivery] = deliveries(client, created.id, ("delivered",))
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1 and delivery["event_id"] == event.id
    assert delivery["response_status_code"] == 200 and delivery["next_attempt_at"] is None
    assert deliveries(client, other.id, ("delivered",), 0) == []

    listed = client.webhooks.list()
    assert [e.id for e in listed.data] == [other.id, created.id]
    assert [e.id for e in client.webhooks.list(limit=1, after=other.id).data] == [created.id]
    assert client.webhooks.event_types.list().data == list(EVENT_TYPES)
    gone = client.webhooks.delete(other.id)
    assert (gone.id, gone.deleted, gone.object) == (other.id, True, "webhook_endpoint.deleted")
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(other.id)


def test_an_eval_run_and_fine_tuning_jobs_send_their_events(gateway: InProcessGateway, receiver: Receiver) -> None:
    tenant_id, _, client = gateway.tenant()
    events = ["eval.run.succeeded", "fine_tuning.job.cancelled", "fine_tuning.job.failed", "batch.failed"]
    endpoint = client.webhooks.create(name="all", url=receiver.url, event_types=events)  # type: ignore[arg-type]
    secret = endpoint.signing_secret

    evaluation = client.evals.create(
        name="e",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
        testing_criteria=[EQUALS_YES],  # type: ignore[list-item]
    )
    content = [{"item": {}, "sample": {"output_text": "yes"}}]
    source: Any = {"type": "jsonl", "source": {"type": "file_content", "content": content}}
    run = client.evals.runs.create(evaluation.id, data_source=source)
    got = receiver.wait(1)
    ran = client.webhooks.unwrap(got[0].body, got[0].headers, secret=secret)
    assert isinstance(ran, EvalRunSucceededWebhookEvent) and ran.data.id == run.id

    # A job cancelled through the API (the gateway's job service) and one the worker fails (the worker's hook).
    database = database_of(gateway)
    try:
        cancelled = gateway.state.jobs.create(job_request(tenant_id)).id
        assert client.fine_tuning.jobs.cancel(cancelled).status == "cancelled"
        failed = gateway.state.jobs.create(job_request(tenant_id, model="retired-model")).id
        registry = AdapterRegistry(database.sessions, gateway.state.settings.data_dir / "worker-adapters")
        worker = Worker(database.sessions, registry, lambda t, f: None, {}, job_hook(PriceBook({})))
        assert worker.run_once() == failed
    finally:
        database.dispose()
    got = receiver.wait(3)
    unwrapped = [client.webhooks.unwrap(item.body, item.headers, secret=secret) for item in got[1:]]
    assert {type(event) for event in unwrapped} == set(JOB_EVENTS)
    assert {event.data.id for event in unwrapped if isinstance(event, JOB_EVENTS)} == {cancelled, failed}

    # A batch failed at creation (its lines checked in the request's own transaction).
    bad = client.files.create(file=("bad.jsonl", b'{"custom_id": "x"}\n'), purpose="batch")
    batch = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed"
    item = receiver.wait(4)[3]
    refused = client.webhooks.unwrap(item.body, item.headers, secret=secret)
    assert isinstance(refused, BatchFailedWebhookEvent) and refused.data.id == batch.id


def job_request(tenant_id: str, model: str = "base") -> JobRequest:
    return JobRequest(
        job_id=new_job_id(),
        tenant_id=tenant_id,
        tenant_name="t",
        model=model,
        training_file="file-abc",
        validation_file=None,
        suffix=None,
        recipe=TrainingRecipe(
            hyperparameters=Hyperparameters(n_epochs=1, batch_size=1, learning_rate_multiplier=1.0),
            lora=LoraShape(rank=8, alpha=16, target_modules=("q_proj",)),
            seed=0,
        ),
        estimated_tokens=10,
        reserved_cost_nanos=0,
        metadata=None,
        created_at=utcnow(),
    )


def test_failed_deliveries_are_retried_with_backoff_then_given_up(
    gateway: InProcessGateway, receiver: Receiver
) -> None:
    _, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="flaky", url=receiver.url, event_types=["batch.completed"])
    receiver.statuses = [500, 503]  # then 200
    run_batch(client)
    tries = receiver.wait(3)
    assert len({item.headers["webhook-id"] for item in tries}) == 1  # one event: the receiver drops duplicates by id
    for item in tries:  # each try signed afresh (a new timestamp) and accepted
        client.webhooks.unwrap(item.body, item.headers, secret=endpoint.signing_secret)
    first, second = tries[1].at - tries[0].at, tries[2].at - tries[1].at
    assert first >= 0.4 * 0.8 and second >= 0.8 * 0.8  # at least 0.4 s then 0.8 s, less 20% of jitter
    [delivery] = deliveries(client, endpoint.id, ("delivered",))
    assert (delivery["status"], delivery["attempts"], delivery["response_status_code"]) == ("delivered", 3, 200)

    receiver.received.clear()
    receiver.statuses = [500] * 10
    run_batch(client)
    receiver.wait(3)
    rows = deliveries(client, endpoint.id, ("failed",))
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 3 and failed[0]["response_status_code"] == 500
    assert failed[0]["last_error"] == "The endpoint answered 500." and failed[0]["next_attempt_at"] is None
    time.sleep(2)
    assert len(receiver.received) == 3  # given up after the bound

    database = database_of(gateway)
    try:  # retention: deliveries that ended go, once old enough
        assert purge_deliveries(database, utcnow() - timedelta(days=1)) == 0
        assert purge_deliveries(database, utcnow() + timedelta(seconds=1)) >= 2
    finally:
        database.dispose()
    assert deliveries(client, endpoint.id, ("delivered", "failed"), 0) == []


def test_the_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(attempts=8, base_seconds=60, cap_seconds=3600)
    for tries, plain in enumerate([60, 120, 240, 480, 960, 1920, 3600, 3600], start=1):
        waits = [backoff.wait(tries) for _ in range(200)]
        assert plain * 0.8 <= min(waits) < max(waits) <= plain * 1.2  # jittered: retries of many events spread out
    assert sum(min(3600, 60 * 2**n) for n in range(7)) / 3600 > 2  # the default 8 tries span over two hours


def test_one_try_at_a_time_per_endpoint(gateway: InProcessGateway, receiver: Receiver) -> None:
    _, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="slow", url=receiver.url, event_types=["batch.completed"])
    receiver.delay = 0.4
    for _ in range(3):
        submit_batch(client)
    got = sorted(receiver.wait(3), key=lambda item: item.at)
    assert all(later.at >= earlier.done for earlier, later in itertools.pairwise(got))  # never overlapping
    assert len(deliveries(client, endpoint.id, ("delivered",), 3)) == 3


def test_a_tenants_tries_in_flight_are_bounded(gateway: InProcessGateway, receiver: Receiver) -> None:
    _, _, client = gateway.tenant()
    for name in ("a", "b", "c"):
        client.webhooks.create(name=name, url=receiver.url, event_types=["batch.completed"])
    receiver.delay = 0.5
    submit_batch(client)
    got = receiver.wait(3)
    most = max(sum(other.at < item.done and item.at < other.done for other in got) for item in got)
    assert most == 2  # three endpoints, two tries at once (webhook_tenant_concurrency)


def test_a_rotated_secret_signs_with_the_old_one_for_a_day_if_asked(
    gateway: InProcessGateway, receiver: Receiver
) -> None:
    _, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="r", url=receiver.url, event_types=["batch.completed"])
    kept = client.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
    assert kept.signing_secret != endpoint.signing_secret and kept.signing_secret.startswith("whsec_")
    run_batch(client)
    [item] = receiver.wait(1)
    for secret in (endpoint.signing_secret, kept.signing_secret):
        client.webhooks.unwrap(item.body, item.headers, secret=secret)

    fresh = client.webhooks.rotate_secret(endpoint.id)
    run_batch(client)
    item = receiver.wait(2)[1]
    client.webhooks.unwrap(item.body, item.headers, secret=fresh.signing_secret)
    for old in (endpoint.signing_secret, kept.signing_secret):
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(item.body, item.headers, secret=old)


def test_test_events_updates_and_a_paused_endpoint(gateway: InProcessGateway, receiver: Receiver) -> None:
    tenant_id, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="t", url=receiver.url, event_types=["batch.completed"])
    result = client.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded")
    assert (result.status_code, result.success, result.webhook_endpoint_id) == (200, True, endpoint.id)
    [item] = receiver.wait(1)
    sample = client.webhooks.unwrap(item.body, item.headers, secret=endpoint.signing_secret)
    assert sample.type == "fine_tuning.job.succeeded"

    renamed = client.webhooks.update(endpoint.id, name="renamed", event_types=["batch.completed", "batch.failed"])
    assert renamed.name == "renamed" and renamed.event_types == ["batch.completed", "batch.failed"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.webhooks.update(endpoint.id, url="ftp://example.com/")
    assert (refused.value.code, refused.value.param) == ("invalid_url", "url")

    paused = gateway.http.post(
        f"/admin/v1/tenants/{tenant_id}/webhook_endpoints/{endpoint.id}", json={"enabled": False}, headers=ADMIN
    )
    assert paused.status_code == 200 and paused.json()["enabled"] is False
    listed = gateway.http.get(f"/admin/v1/tenants/{tenant_id}/webhook_endpoints", headers=ADMIN).json()
    assert [e["id"] for e in listed["data"]] == [endpoint.id] and "signing_secret" not in listed["data"][0]
    with pytest.raises(openai.PermissionDeniedError) as paused_by_operator:
        client.webhooks.update(endpoint.id, extra_body={"enabled": True})
    assert paused_by_operator.value.code == "webhook_endpoint_paused"
    with pytest.raises(openai.PermissionDeniedError):
        client.webhooks.test(endpoint.id, event_type="batch.completed")
    run_batch(client)
    time.sleep(0.5)
    assert len(receiver.received) == 1 and deliveries(client, endpoint.id, ("pending",), 0) == []
    resumed = gateway.http.post(
        f"/admin/v1/tenants/{tenant_id}/webhook_endpoints/{endpoint.id}", json={"enabled": True}, headers=ADMIN
    )
    assert resumed.json()["enabled"] is True
    assert client.webhooks.update(endpoint.id, extra_body={"enabled": False}).enabled is False  # type: ignore[attr-defined]
    assert client.webhooks.update(endpoint.id, extra_body={"enabled": True}).enabled is True  # type: ignore[attr-defined]


def test_endpoints_are_the_tenants_own_and_bounded(gateway: InProcessGateway, receiver: Receiver) -> None:
    _, _, owner = gateway.tenant()
    _, _, other = gateway.tenant()
    mine = owner.webhooks.create(name="mine", url=receiver.url, event_types=["batch.completed"])
    theirs = other.webhooks.create(name="theirs", url=receiver.url, event_types=["batch.completed"])
    calls: list[Callable[[], object]] = [
        lambda: other.webhooks.retrieve(mine.id),
        lambda: other.webhooks.update(mine.id, name="x"),
        lambda: other.webhooks.delete(mine.id),
        lambda: other.webhooks.rotate_secret(mine.id),
        lambda: other.webhooks.test(mine.id, event_type="batch.completed"),
        lambda: other.get(f"/webhook_endpoints/{mine.id}/deliveries", cast_to=object),
        lambda: other.webhooks.list(after=mine.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert [e.id for e in other.webhooks.list().data] == [theirs.id]
    run_batch(owner)
    [item] = receiver.wait(1)
    time.sleep(0.5)
    assert len(receiver.received) == 1  # the owner's batch went to the owner's endpoint alone
    owner.webhooks.unwrap(item.body, item.headers, secret=mine.signing_secret)

    owner.webhooks.create(name="2", url=receiver.url, event_types=["batch.completed"])
    owner.webhooks.create(name="3", url=receiver.url, event_types=["batch.completed"])
    with pytest.raises(openai.BadRequestError) as full:
        owner.webhooks.create(name="4", url=receiver.url, event_types=["batch.completed"])
    assert full.value.code == "webhook_endpoint_limit_reached"
    for body, param in (
        ({"name": "x", "url": receiver.url, "event_types": ["response.completed"]}, "event_types"),
        ({"name": "x", "url": receiver.url, "event_types": []}, "event_types"),
        ({"name": "", "url": receiver.url, "event_types": ["batch.failed"]}, "name"),
        ({"name": "x", "url": receiver.url, "event_types": ["batch.failed"], "secret": "mine"}, "secret"),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            owner.post("/webhook_endpoints", body=body, cast_to=object)
        assert bad.value.param is not None and bad.value.param.startswith(param), bad.value.body


REFUSED_URLS = [
    "http://127.0.0.1:8000/hooks",
    "http://10.1.2.3/",
    "http://192.168.0.10/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fd00:ec2::254]/",
    "http://localhost:8000/",  # a name that resolves to loopback
    "http://2130706433/",  # 127.0.0.1 as one number
    "http://0.0.0.0/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://example.com/",
    "http://user:pass@example.com/",
    "http://example.com/a b",
    "https://example.com/" + "a" * 2048,
]


def test_destinations_in_the_operators_network_are_refused(in_process: Callable[..., InProcessGateway]) -> None:
    _, _, client = in_process().tenant()
    for url in REFUSED_URLS:
        with pytest.raises(openai.BadRequestError) as refused:
            client.webhooks.create(name="x", url=url, event_types=["batch.completed"])
        assert refused.value.param == "url", refused.value.body
        assert refused.value.code == "invalid_url" or "at most 2048 characters" in refused.value.message, url
    assert client.webhooks.list().data == []


def test_a_destination_checked_again_at_delivery_is_refused_after_dns(
    in_process: Callable[..., InProcessGateway], receiver: Receiver, tmp_path: Path
) -> None:
    gateway = in_process(webhook_poll_seconds=0.05, webhook_max_attempts=1)
    _, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="x", url="http://93.184.215.14/hooks", event_types=["batch.completed"])
    engine = create_engine(f"sqlite:///{tmp_path / 'llmaas.db'}")
    localhost = receiver.url.replace("127.0.0.1", "localhost")
    with engine.begin() as conn:  # as if its name resolved to the operator's network by now (DNS rebinding)
        conn.execute(text("UPDATE webhook_endpoints SET url = :u WHERE id = :e"), {"u": localhost, "e": endpoint.id})
    engine.dispose()
    run_batch(client)
    [delivery] = deliveries(client, endpoint.id, ("failed",))
    assert delivery["status"] == "failed" and "not a public address" in delivery["last_error"]
    assert receiver.received == []

    with pytest.raises(OSError, match="not a public address"):
        asyncio.run(CheckedResolver(Destinations()).resolve("localhost", 80))
    assert Destinations(allowed_hosts=("hooks.example.com", "*.corp.example")).check_url("https://a.corp.example/")
    for url in ("https://example.com/", "https://corp.example.evil/", localhost):
        with pytest.raises(InvalidRequestError, match="not one this server sends webhooks to"):
            Destinations(allowed_hosts=("hooks.example.com", "*.corp.example")).check_url(url)


def test_a_tenants_webhooks_are_exported_without_secrets_and_erased_with_it(
    gateway: InProcessGateway, receiver: Receiver
) -> None:
    tenant_id, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="x", url=receiver.url, event_types=["batch.completed"])
    run_batch(client)
    deliveries(client, endpoint.id, ("delivered",))
    archive = gateway.http.get(f"/admin/v1/tenants/{tenant_id}/export", headers=ADMIN)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        endpoints = tar.extractfile("webhooks/endpoints.jsonl").read().splitlines()  # type: ignore[union-attr]
        sent = tar.extractfile("webhooks/deliveries.jsonl").read().splitlines()  # type: ignore[union-attr]
    [row] = [json.loads(line) for line in endpoints]
    assert row["id"] == endpoint.id and row["url"] == receiver.url
    assert "secret" not in row and "previous_secret" not in row and endpoint.signing_secret not in archive.text
    assert [json.loads(line)["endpoint_id"] for line in sent] == [endpoint.id]

    deleted = gateway.http.delete(f"/admin/v1/tenants/{tenant_id}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["removed"]["webhook_endpoints"] == 1
    engine = create_engine(f"sqlite:///{gateway.state.settings.data_dir / 'llmaas.db'}")
    with engine.connect() as conn:
        left = [
            conn.execute(text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t"), {"t": tenant_id}).scalar()
            for table in ("webhook_endpoints", "webhook_deliveries")
        ]
    engine.dispose()
    assert left == [0, 0]


def test_two_gateways_on_postgresql_deliver_each_event_once(tmp_path: Path, receiver: Receiver) -> None:
    shared = {**FAST_RETRIES, "webhook_secrets_key": "one-secrets-key-for-every-gateway"}
    with fresh_postgres_database("llmaas_webhooks") as url, ExitStack() as stack:
        gateways = []
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            gateways.append(stack.enter_context(in_process_gateway(tmp_path / name, database_url=url, **shared)))
        _, _, client = gateways[0].tenant()
        endpoint = client.webhooks.create(name="x", url=receiver.url, event_types=["batch.completed"])
        batches = {submit_batch(client).id for _ in range(6)}
        got = receiver.wait(6, timeout=60)
        time.sleep(1)
        events = [client.webhooks.unwrap(item.body, item.headers, secret=endpoint.signing_secret) for item in got]
        assert (
            len(got) == 6
            and {event.data.id for event in events if isinstance(event, BatchCompletedWebhookEvent)} == batches
        )
        assert len({item.headers["webhook-id"] for item in got}) == 6  # each event sent once, by one gateway
