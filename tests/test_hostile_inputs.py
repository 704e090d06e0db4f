"""A tenant who wants free tokens, and anyone who wants to take the gateway down: each attempt gets a cheap,
clear 4xx, never a 500, never a stall of other requests, never free tokens.

Runs one real gateway process (auth, admission, ledger, routes, on PostgreSQL) in front of the instant fake
engine; what needs the real engine (a seed vLLM cannot take) is tested in ``test_engine_safety.py``."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, text

from tests.support import MODEL
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import admin_client, create_tenant

MiB = 1024 * 1024
METRICS_TOKEN = "metrics-token-0123456789"
GOOD_CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
HI = [{"role": "user", "content": "hi"}]


@dataclass
class Gateway:
    base: str
    process: psutil.Process
    admin_key: str
    log: Path
    database_url: str

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def ledger_rows(self, tenant_id: str) -> list[dict[str, Any]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                query = text("SELECT * FROM usage_records WHERE tenant_id = :t ORDER BY id")
                return [dict(row._mapping) for row in conn.execute(query, {"t": tenant_id})]
        finally:
            engine.dispose()

    def wait_ledger(self, tenant_id: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(rows := self.ledger_rows(tenant_id)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return rows


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("hostile")
    with (
        fresh_postgres_database("llmaas_hostile") as url,
        fake_gateway(
            data,
            admin_key=None,  # generated on first start: it must not reach the log
            database_url=url,
            log_level="info",
            metrics_token=METRICS_TOKEN,
            meter_flush_interval_seconds=0.2,
        ) as running,
    ):
        admin_key = (data / "admin_key").read_text().strip()
        yield Gateway(running.base, psutil.Process(running.process.pid), admin_key, running.log, url)


@pytest.fixture(scope="module")
def admin(gateway: Gateway) -> Iterator[httpx.Client]:
    with admin_client(gateway.base, gateway.admin_key, timeout=5) as client:
        yield client


def tenant_client(gateway: Gateway, admin: httpx.Client, name: str, **quotas: Any) -> tuple[str, httpx.Client]:
    tenant, key = create_tenant(admin, name, **quotas)
    return tenant["id"], httpx.Client(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}, timeout=30)


def chat(client: httpx.Client, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    return client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 3, **extra}, headers=headers
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


# -- server-owned identity -----------------------------------------------------------------------------------------


def test_one_client_request_id_sent_n_times_gets_only_rpm_requests_in(gateway: Gateway, admin: httpx.Client) -> None:
    tenant_id, client = tenant_client(gateway, admin, "reuse", requests_per_minute=2)
    codes = [chat(client, headers={"x-request-id": "always-the-same"}).status_code for _ in range(6)]
    assert codes == [200, 200, 429, 429, 429, 429]
    rows = gateway.wait_ledger(tenant_id, 2)
    assert len(rows) == 2
    assert len({row["request_id"] for row in rows}) == 2
    assert {row["client_request_id"] for row in rows} == {"always-the-same"}


def test_over_long_strings_are_400_and_the_longest_allowed_fit_postgresql(
    gateway: Gateway, admin: httpx.Client
) -> None:
    tenant_id, client = tenant_client(gateway, admin, "long")
    too_long_user = chat(client, user="u" * 257)
    assert too_long_user.status_code == 400 and error_of(too_long_user)["param"] == "user"
    too_long_id = chat(client, headers={"x-request-id": "r" * 129})
    assert too_long_id.status_code == 400 and error_of(too_long_id)["param"] == "x-request-id"
    too_long_model = chat(client, model="m" * 257)
    assert too_long_model.status_code == 400 and error_of(too_long_model)["param"] == "model"
    longest = chat(client, user="u" * 256, headers={"x-client-request-id": "r" * 128})
    assert longest.status_code == 200
    assert chat(client).status_code == 200  # and the ledger goes on
    rows = gateway.wait_ledger(tenant_id, 2)
    assert [(row["end_user"], row["client_request_id"]) for row in rows] == [("u" * 256, "r" * 128), (None, None)]


# -- fine-tuning reserves budget only --------------------------------------------------------------------------------


def test_a_fine_tuning_job_takes_no_inference_slot_and_no_tpm(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(
        gateway, admin, "trainer", max_concurrent_requests=1, tokens_per_minute=1_000, monthly_token_budget=5_000
    )
    upload = client.post(
        "/v1/files", files={"file": ("train.jsonl", GOOD_CHAT * 30)}, data={"purpose": "fine-tune"}
    ).json()
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": MODEL, "training_file": upload["id"], "hyperparameters": {"n_epochs": 3}},
    )
    assert job.status_code == 200, job.text
    # The job (no worker runs here: it stays queued, its reservation held) reserved ~3,400 tokens of budget,
    # more than the tenant's TPM. Inference is untouched: the slot is free, the TPM window empty.
    first = chat(client)
    assert first.status_code == 200
    assert int(first.headers["x-ratelimit-remaining-tokens"]) > 900
    assert chat(client).status_code == 200
    second = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": MODEL, "training_file": upload["id"], "hyperparameters": {"n_epochs": 3}},
    )
    assert second.status_code == 429  # but the budget holds the first job's reservation
    assert error_of(second)["code"] == "insufficient_quota"


# -- cheap refusals first --------------------------------------------------------------------------------------------


def raw_request(base: str, head: bytes, body: Iterable[bytes]) -> tuple[int, float]:
    """Send ``head`` then body chunks until the server answers; the status and the seconds it took."""
    host, port = base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break  # answered already
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(30)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), time.monotonic() - started


def _head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: test", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(total: int, size: int = MiB) -> Iterator[bytes]:
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"


def test_an_unauthenticated_huge_body_is_refused_before_it_is_read(gateway: Gateway) -> None:
    before = gateway.rss()
    announced = _head("/v1/chat/completions", {"content-type": "application/json", "content-length": str(300 * MiB)})
    status, seconds = raw_request(gateway.base, announced, (b"x" * MiB for _ in range(300)))
    assert status == 401 and seconds < 5
    chunked = _head("/v1/files", {"content-type": "multipart/form-data; boundary=x", "transfer-encoding": "chunked"})
    status, _ = raw_request(gateway.base, chunked, _chunked(300 * MiB))
    assert status == 401
    assert gateway.rss() - before < 16 * MiB


def test_a_body_over_the_cap_is_413_from_its_length_or_while_it_streams(gateway: Gateway, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "bodies")
    auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    status, seconds = raw_request(
        gateway.base,
        _head("/v1/chat/completions", {**auth, "content-length": str(300 * MiB)}),
        (b"x" * MiB for _ in range(300)),
    )
    assert status == 413 and seconds < 5
    status, _ = raw_request(
        gateway.base, _head("/v1/chat/completions", {**auth, "transfer-encoding": "chunked"}), _chunked(50 * MiB)
    )
    assert status == 413
    with httpx.Client(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}) as client:
        response = client.post(
            "/v1/completions", content=b"x" * (3 * MiB), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_a_huge_prompt_is_refused_without_stalling_other_requests(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "prompts")
    slowest = 0.0
    stop = threading.Event()

    def probe() -> None:
        nonlocal slowest
        with httpx.Client(base_url=gateway.base) as health:
            while not stop.is_set():
                started = time.monotonic()
                assert health.get("/health").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        fifty_mb = client.post("/v1/completions", json={"model": MODEL, "prompt": "x" * (50 * 1000 * 1000)})
        just_under_the_body_cap = client.post("/v1/completions", json={"model": MODEL, "prompt": "word " * 400_000})
    finally:
        stop.set()
        prober.join()
    assert fifty_mb.status_code == 413
    assert just_under_the_body_cap.status_code == 400
    assert error_of(just_under_the_body_cap)["code"] == "context_length_exceeded"
    assert "maximum context length" in error_of(just_under_the_body_cap)["message"]
    assert slowest < 0.5


def test_a_request_may_not_ask_for_unbounded_work(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "batchy", requests_per_minute=100)
    many = client.post("/v1/completions", json={"model": MODEL, "prompt": ["a"] * 10_000, "max_tokens": 1})
    assert many.status_code == 400 and error_of(many)["code"] == "too_many_prompts"
    choices = client.post("/v1/completions", json={"model": MODEL, "prompt": ["a"] * 8, "n": 9, "max_tokens": 1})
    assert choices.status_code == 400 and error_of(choices)["param"] == "n"
    tokens = chat(client, n=64, max_tokens=2000)
    assert tokens.status_code == 400 and error_of(tokens)["param"] == "max_tokens"
    # Several prompts count as several requests against RPM: 30 + 30 + 30 fit in 100, the fourth does not.
    batch = {"model": MODEL, "prompt": ["a"] * 30, "max_tokens": 1}
    codes = [client.post("/v1/completions", json=batch).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


# -- uploads ---------------------------------------------------------------------------------------------------------


def test_an_upload_streams_to_disk(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "uploader")
    peak = before = gateway.rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gateway.rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        payload = os.urandom(60 * MiB)
        created = client.post("/v1/files", files={"file": ("blob.bin", payload)}, data={"purpose": "user_data"})
    finally:
        done.set()
        sampler.join()
    assert created.status_code == 200, created.text
    assert created.json()["bytes"] == 60 * MiB
    assert peak - before < 16 * MiB, f"RSS rose by {(peak - before) / MiB:.1f} MiB"
    downloaded = client.get(f"/v1/files/{created.json()['id']}/content")
    assert downloaded.content == payload


def test_uploads_count_against_rpm_and_the_storage_quota(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "storage", requests_per_minute=3, max_storage_bytes=1500)

    def upload(size: int) -> httpx.Response:
        return client.post("/v1/files", files={"file": ("notes.txt", b"x" * size)}, data={"purpose": "user_data"})

    assert upload(1000).status_code == 200
    over_quota = upload(1000)
    assert over_quota.status_code == 429 and error_of(over_quota)["code"] == "insufficient_quota"
    assert over_quota.headers["x-should-retry"] == "false"
    assert upload(400).status_code == 200
    assert upload(10).status_code == 429  # the fourth request of the minute
    listed = client.get("/v1/files").json()["data"]
    assert sorted(item["bytes"] for item in listed) == [400, 1000]


def test_creating_jobs_and_evals_counts_against_rpm(gateway: Gateway, admin: httpx.Client) -> None:
    _, trainer = tenant_client(gateway, admin, "rpm-jobs", requests_per_minute=2)
    upload = trainer.post("/v1/files", files={"file": ("t.jsonl", GOOD_CHAT)}, data={"purpose": "fine-tune"}).json()
    job = {"model": MODEL, "training_file": upload["id"]}
    assert trainer.post("/v1/fine_tuning/jobs", json=job).status_code == 200  # the second request of the minute
    refused = trainer.post("/v1/fine_tuning/jobs", json=job)
    assert refused.status_code == 429 and error_of(refused)["code"] == "rate_limit_exceeded"
    assert len(trainer.get("/v1/fine_tuning/jobs").json()["data"]) == 1
    _, evaluator = tenant_client(gateway, admin, "rpm-evals", requests_per_minute=1)
    definition = {
        "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "eq", "input": "a", "reference": "a", "operation": "eq"}],
    }
    assert evaluator.post("/v1/evals", json=definition).status_code == 200
    refused = evaluator.post("/v1/evals", json=definition)
    assert refused.status_code == 429 and error_of(refused)["code"] == "rate_limit_exceeded"
    assert refused.headers["retry-after"]
    assert len(evaluator.get("/v1/evals").json()["data"]) == 1


# -- no input reaches a 500 ------------------------------------------------------------------------------------------


def test_inputs_that_used_to_give_500_are_400(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "fuzzed")
    surrogate = client.post(
        "/v1/chat/completions",
        content=b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL.encode(),
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 400 and "surrogate" in error_of(surrogate)["message"]
    assert chat(client, seed=2**64).status_code == 400
    assert chat(client, seed=2**63 - 1).status_code == 200
    upload = client.post("/v1/files", files={"file": ("t.jsonl", GOOD_CHAT)}, data={"purpose": "fine-tune"}).json()
    job = client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": upload["id"]}).json()
    for after in ("abc", "ftevent-1", "ftevent-" + "0" * 25, "ftevent-"):
        events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": after})
        assert events.status_code == 400 and error_of(events)["param"] == "after"
    assert (
        client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": "ftevent-" + "0" * 24}).status_code
        == 200
    )
    tenant = admin.get("/admin/v1/tenants").json()["data"][0]["id"]
    assert admin.post(f"/admin/v1/tenants/{tenant}/keys", json={"expires_in_days": 1e9}).status_code == 400
    for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1e30"):
        assert client.get("/v1/usage", params={"since": since}).status_code == 400
    assert admin.post("/admin/v1/tenants", json={"name": "huge", "requests_per_minute": 2**40}).status_code == 400


def test_a_tenant_may_not_be_named_like_an_id(gateway: Gateway, admin: httpx.Client) -> None:
    victim, _ = create_tenant(admin, "victim")
    assert victim["id"].startswith("ten_")
    for name in (victim["id"], "ten_0123456789abcdef0123", "ftjob-0123456789abcdef0123", "key_" + "a" * 24):
        created = admin.post("/admin/v1/tenants", json={"name": name})
        assert created.status_code == 400 and error_of(created)["param"] == "name", name
    other, _ = create_tenant(admin, "renamed")
    renamed = admin.patch(f"/admin/v1/tenants/{other['id']}", json={"name": victim["id"]})
    assert renamed.status_code == 400 and error_of(renamed)["param"] == "name"
    assert admin.get(f"/admin/v1/tenants/{victim['id']}").json()["name"] == victim["name"]
    # Names that merely contain hex or a prefix stay fine.
    for name in ("ten_team", f"team-{os.urandom(4).hex()}", f"ten_{os.urandom(7).hex()}x"):
        assert admin.post("/admin/v1/tenants", json={"name": name}).status_code == 201, name


# -- observability without leaks -------------------------------------------------------------------------------------


def test_metrics_need_the_admin_key_or_the_metrics_token(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "peeker")
    assert httpx.get(f"{gateway.base}/metrics").status_code == 401
    assert client.get("/metrics").status_code == 403
    assert admin.get("/metrics").status_code == 200
    scraped = httpx.get(f"{gateway.base}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
    assert scraped.status_code == 200 and "llmaas_ledger_backlog" in scraped.text
    assert client.get("/v1/models", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 401


def test_secrets_never_reach_the_log(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "leaky")
    secret = "sk-in-the-query-string-0123456789"
    assert client.get("/v1/models", params={"api_key": secret, "limit": "5"}).status_code == 400  # unknown params
    time.sleep(0.2)
    log = gateway.log.read_text()
    assert "GET /v1/models?api_key=%2A%2A%2A&limit=5 400" in log
    assert secret not in log
    assert gateway.admin_key not in log
    assert "generated the admin key" in log


def test_every_error_has_openai_shape(gateway: Gateway, admin: httpx.Client) -> None:
    _, client = tenant_client(gateway, admin, "shapes")
    for response in (
        client.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
        client.post("/v1/files", content=b"x", headers={"content-type": "text/plain"}),
        client.get("/v1/files/file-nope"),
        client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": "file-x" * 20}),
        httpx.post(f"{gateway.base}/v1/chat/completions", json=json.loads('{"model": "x"}')),
    ):
        assert 400 <= response.status_code < 500
        error_of(response)
