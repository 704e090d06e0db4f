"""Webhooks through the official ``openai`` client (``client.webhooks.*``): endpoints made, read, changed, rotated
and deleted in OpenAI's shapes; a signed event that ``client.webhooks.unwrap`` accepts, to a real HTTP receiver,
for a batch that completed, an eval run that succeeded, a fine-tuning job cancelled through the API and one the
worker failed; retries after 500s with exponential backoff and the same ``webhook-id``, given up after the bound;
a rotated secret (the old one kept 24 h, or not); SSRF refusals at creation and at delivery; a paused endpoint;
isolation between tenants; the bound on endpoints; a tenant's webhooks exported (no secret) and erased with it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import ipaddress
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
from sqlalchemy import create_engine, delete, select, text, update

from adapters.hyperparameters import Hyperparameters
from adapters.jobs import JobRequest, new_job_id
from adapters.recipe import LoraShape, TrainingRecipe
from adapters.registry import AdapterRegistry
from adapters.store import utcnow
from adapters.worker import Worker
from gateway.accounting.pricing import PriceBook
from gateway.app import job_hook
from gateway.db import Database, WebhookDelivery, WebhookEndpoint
from gateway.errors import InvalidRequestError
from gateway.private_files import read_or_create_secret
from gateway.webhooks import destinations, events
from gateway.webhooks.delivery import TESTS_PER_TENANT
from gateway.webhooks.destinations import CheckedResolver, Destinations, is_public
from gateway.webhooks.events import EVENT_TYPES, enqueue
from gateway.webhooks.outbox import Backoff, Outbox, purge_deliveries
from gateway.webhooks.secrets import SecretBox, new_secret
from gateway.webhooks.service import WebhookService
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
    assert delivery["status"] == "failed" and "does not resolve to a public address" in delivery["last_error"]
    assert "127.0.0.1" not in delivery["last_error"]  # the operator's addresses are not echoed
    assert receiver.received == []

    with pytest.raises(OSError, match="does not resolve to a public address"):
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


# -- the review's findings (each test fails without its fix) ---------------------------------------------------------


def outbox_on(database: Database, key: str, attempts: int = 3) -> Outbox:
    service = WebhookService(database, SecretBox(key), Destinations(allow_private=True), 10)
    return Outbox(database, service, Backoff(attempts, 60, 600), per_tenant=4)


def test_a_gateway_with_another_secrets_key_leaves_the_delivery_without_spending_a_try(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'shared.db'}")
    database.migrate()
    right, wrong = "the-key-every-gateway-shares", "a-key-this-gateway-made-alone"
    now = utcnow()
    with database.session() as session:
        session.add(
            WebhookEndpoint(
                id="whep_1",
                tenant_id="t1",
                name="x",
                url="http://127.0.0.1:9/hooks",
                event_types=["batch.completed"],
                enabled=True,
                paused_by_operator=False,
                secret=SecretBox(right).seal("whep_1", new_secret()),
                secret_hint="whsec_...abcd",
                created_at=now,
                updated_at=now,
            )
        )
        enqueue(session, "t1", "batch.completed", "batch_1")
    try:
        assert outbox_on(database, wrong).claim("gateway-b", 120) is None  # released, not sent unsigned
        with database.session() as session:
            row = session.scalars(select(WebhookDelivery)).one()
            assert (row.status, row.attempts, row.runner_id) == ("pending", 0, None)  # no try spent
            assert row.next_attempt_at > utcnow()  # and left to the other gateways a while
            session.execute(update(WebhookDelivery).values(next_attempt_at=now))
        with database.session() as session:
            endpoint = session.get(WebhookEndpoint, "whep_1")
            assert endpoint is not None and outbox_on(database, wrong)._endpoints.key_matches(endpoint) is False
        assert outbox_on(database, wrong)._endpoints.check_key(configured=False, shared_database=True) == 1
        claimed = outbox_on(database, right).claim("gateway-a", 120)
        assert claimed is not None and claimed.signing is not None and len(claimed.signing.secrets) == 1
    finally:
        database.dispose()


def test_the_secrets_key_file_is_never_read_half_written(tmp_path: Path) -> None:
    path = tmp_path / "webhook_secrets_key"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda n: read_or_create_secret(path, lambda: f"key-{n}-" + "x" * 40), range(16)))
    assert len({key for key, _ in keys}) == 1 and sum(made for _, made in keys) == 1  # one key, made once
    assert keys[0][0] and path.read_text().strip() == keys[0][0] and list(tmp_path.iterdir()) == [path]
    path.write_text("")  # a crash left it empty: an error, never an empty (public) key
    with pytest.raises(RuntimeError, match="empty"):
        read_or_create_secret(path, lambda: "unused")
    with pytest.raises(ValueError):
        SecretBox("")


def test_only_public_unicast_addresses_and_dotted_quads_pass() -> None:
    for address in (
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "fec0::1",  # site-local
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
        "3fff::1",  # documentation
        "5f00::1",
        "2001:db8::1",
        "ff02::1",
        "198.18.0.1",
        "240.0.0.1",
    ):
        assert not is_public(ipaddress.ip_address(address)), address
    for address in ("2606:4700:4700::1111", "8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"):
        assert is_public(ipaddress.ip_address(address)), address
    for host in ("2130706433", "127.1", "0177.0.0.1", "0x7f.0.0.1", "017700000001", "1"):
        with pytest.raises(InvalidRequestError, match="four decimal numbers"):
            Destinations(allow_private=True).check_url(f"http://{host}/")


def test_an_unresolvable_host_at_delivery_is_a_failed_try_and_no_address_is_echoed(
    in_process: Callable[..., InProcessGateway],
) -> None:
    with pytest.raises(OSError):  # not an API error escaping aiohttp
        asyncio.run(CheckedResolver(Destinations()).resolve("nonexistent.invalid", 80))
    _, _, client = in_process().tenant()
    with pytest.raises(openai.BadRequestError) as refused:
        client.webhooks.create(name="x", url="http://localhost:8000/", event_types=["batch.completed"])
    assert "127.0.0.1" not in refused.value.message and "::1" not in refused.value.message


def test_cheap_refusals_come_before_any_dns_lookup(
    gateway: InProcessGateway, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, owner = gateway.tenant()
    _, _, other = gateway.tenant()
    mine = owner.webhooks.create(name="1", url=receiver.url, event_types=["batch.completed"])
    owner.webhooks.create(name="2", url=receiver.url, event_types=["batch.completed"])
    owner.webhooks.create(name="3", url=receiver.url, event_types=["batch.completed"])
    lookups: list[str] = []

    async def resolve(host: str, port: int, family: Any = 0) -> Any:
        lookups.append(host)
        raise OSError("no lookups in this test")

    monkeypatch.setattr(destinations, "_resolve", resolve)
    with pytest.raises(openai.BadRequestError) as full:
        owner.webhooks.create(name="4", url="http://slow-dns.example/", event_types=["batch.completed"])
    assert full.value.code == "webhook_endpoint_limit_reached"
    with pytest.raises(openai.NotFoundError):
        other.webhooks.update(mine.id, url="http://slow-dns.example/")
    assert lookups == []


def test_a_dead_endpoint_backs_off_as_a_whole_and_its_backlog_is_bounded(
    gateway: InProcessGateway, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="dead", url=receiver.url, event_types=["batch.completed"])
    receiver.statuses = [500] * 20
    for _ in range(3):
        submit_batch(client)
    got = receiver.wait(4)
    gaps = [later.at - earlier.done for earlier, later in itertools.pairwise(got[:4])]
    assert min(gaps) >= 0.4 * 0.8, gaps  # one probe per backoff interval, not one try per queued event

    database = database_of(gateway)
    held = (WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")
    try:
        with database.session() as session:  # backing off for long now: what comes waits, up to the bound
            later = utcnow() + timedelta(hours=1)
            session.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id).values(retry_at=later))
            session.execute(delete(WebhookDelivery).where(*held))
        monkeypatch.setattr(events, "MAX_PENDING", 2)
        with database.session() as session:
            for n in range(3):
                enqueue(session, tenant_id, "batch.completed", f"batch_{n}")
        time.sleep(0.5)
        with database.session() as session:
            rows = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id).order_by(WebhookDelivery.id)
            ).all()
            late = [row for row in rows if json.loads(row.payload)["data"]["id"].startswith("batch_")]
            assert sorted(row.status for row in late) == ["failed", "pending", "pending"]
            assert all(row.attempts == 0 for row in late)  # held while the endpoint backs off: no try made
            [dropped] = [row for row in late if row.status == "failed"]
            assert dropped.last_error is not None and "already waiting" in dropped.last_error
    finally:
        database.dispose()


def test_pausing_an_endpoint_keeps_its_queued_retries(gateway: InProcessGateway, receiver: Receiver) -> None:
    _, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="p", url=receiver.url, event_types=["batch.completed"])
    receiver.statuses = [500]
    run_batch(client)
    receiver.wait(1)
    client.webhooks.update(endpoint.id, extra_body={"enabled": False})
    time.sleep(1.5)  # its retry was due after 0.4 s: it waits, unsent and not failed
    [waiting] = deliveries(client, endpoint.id, ("pending",))
    assert (waiting["status"], waiting["attempts"], len(receiver.received)) == ("pending", 1, 1)
    client.webhooks.update(endpoint.id, extra_body={"enabled": True})
    [sent] = deliveries(client, endpoint.id, ("delivered",))
    assert (sent["status"], sent["attempts"]) == ("delivered", 2)


def test_test_sends_are_bounded_per_tenant(gateway: InProcessGateway, receiver: Receiver) -> None:
    _, _, client = gateway.tenant()
    endpoint = client.webhooks.create(name="t", url=receiver.url, event_types=["batch.completed"])
    receiver.delay = 1.0
    once = client.with_options(max_retries=0)

    def test_once(_: int) -> str:
        try:
            once.webhooks.test(endpoint.id, event_type="batch.completed")
        except openai.RateLimitError:
            return "refused"
        return "sent"

    with concurrent.futures.ThreadPoolExecutor(TESTS_PER_TENANT + 2) as pool:
        outcomes = list(pool.map(test_once, range(TESTS_PER_TENANT + 2)))
    assert outcomes.count("sent") <= TESTS_PER_TENANT and outcomes.count("refused") >= 2
