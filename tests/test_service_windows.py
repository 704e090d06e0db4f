"""The service page's rolling windows and usage labels (``gateway.ops.minutes``, ``gateway.ops.minute_store``,
``gateway.routes.console.usage_view``): per-minute counts of two gateways on one database merged into the last 1,
5 and 15 minutes, refusals and disconnects counted but never timed, old minutes ageing out; two gateway processes
on one PostgreSQL answering, refusing and losing clients (streamed and not), seen from either gateway's service
page, a client that left counted as 499 (never a 5xx) and logged without a traceback; usage rows and the CSV naming
keys by name and prefix, and fine-tuning, evaluations and batches by what they are."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from gateway.accounting.records import UsageEntry, insert_usage
from gateway.accounting.usage import UsageReports
from gateway.bootstrap import open_database
from gateway.db import Database
from gateway.ops.minute_store import MinuteStore
from gateway.ops.minutes import MinuteCounts
from gateway.routes.console.usage_view import month_totals, this_month, used_by
from gateway.settings import GatewaySettings
from tests.support import ADMIN_KEY, MODEL
from tests.support.console import console
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import fake_gateway
from tests.support.metrics import metric_value
from tests.support.tenants import admin_client, create_tenant

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_two_gateways_windows_merge_and_age(database: Database) -> None:
    clock = Clock()
    a_counts, b_counts = MinuteCounts(clock), MinuteCounts(clock)
    a, b = MinuteStore(database, "gw_a", a_counts, clock), MinuteStore(database, "gw_b", b_counts, clock)
    for _ in range(9):
        a_counts.request("answered", 0.2)  # all in the (0.1, 0.25] bucket
    b_counts.request("answered", 0.2)
    for _ in range(100):  # instant refusals: counted, not timed
        b_counts.request("refused", 0.001)
    b_counts.request("disconnected", 30)
    b_counts.request("server_error", 0.5)
    b_counts.first_token(0.04)
    b.flush()
    one, five, fifteen = a.recent()["windows"]  # a's own counts are written by its read
    assert (one["answered"], one["refused"], one["disconnected"], one["server_error"]) == (10, 100, 1, 1)
    assert one["requests"] == 112
    assert 0.1 < one["latency_p50_seconds"] < 0.25  # the refusals do not pull it down
    assert one["latency_p99_seconds"] <= 0.25  # nor the disconnect or the error up
    assert 0.025 < one["ttft_p50_seconds"] <= 0.05
    assert one["server_error_rate"] == pytest.approx(1 / 112)

    clock.now += 4 * 60  # four minutes on: out of the last minute, still in the last 5
    a_counts.request("answered", 2)
    recent = b.recent()
    one, five, fifteen = recent["windows"]
    assert one["requests"] == 0  # a's new request is not written yet (a writes every few seconds)
    assert five["requests"] == fifteen["requests"] == 112
    assert [m["requests"] for m in recent["minutes"]][-5:] == [112, 0, 0, 0, 0]
    one = a.recent()["windows"][0]
    assert (one["answered"], one["latency_p50_seconds"] is not None) == (1, True)

    clock.now += 15 * 60  # the first minute ages out of every window, and out of the table
    assert [w["requests"] for w in a.recent()["windows"]] == [0, 0, 0]
    with database.session() as session:
        assert session.execute(text("SELECT count(*) FROM service_minutes")).scalar() == 1


def test_a_failed_write_keeps_the_minutes_for_the_next(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    counts = MinuteCounts(Clock())
    counts.request("answered", 0.2)
    with pytest.raises(OperationalError):  # no table yet: the write fails
        MinuteStore(database, "gw", counts, Clock()).flush()
    database.migrate()
    assert MinuteStore(database, "gw", counts, Clock()).recent()["windows"][0]["answered"] == 1


def test_used_by_names_keys_and_kinds() -> None:
    keys = {"key_1": "ci · sk-AbCd…"}
    assert used_by({"key_id": "key_1", "kind": "inference"}, keys) == "ci · sk-AbCd…"
    assert used_by({"key_id": "key_1", "kind": "batch"}, keys) == "batch · ci · sk-AbCd…"
    assert used_by({"key_id": "key_1", "kind": "eval"}, keys) == "evaluations · ci · sk-AbCd…"
    assert used_by({"key_id": None, "kind": "fine_tune"}, keys) == "fine-tuning"
    assert used_by({"key_id": "key_gone", "kind": "inference"}, keys) == "key_gone"  # deleted with its tenant


def test_month_totals_equal_the_month_report(database: Database) -> None:
    """The operator's table is summed from the per-day report it charts: the same as asking for the month."""
    first = datetime.now(UTC).replace(day=1, hour=1, tzinfo=None)
    entries = [
        UsageEntry(f"r{i}", f"ten_{i % 2}", "k", f"m{i % 3}", "inference", "completed", i, 2 * i, i * 1_000_001, first)
        for i in range(12)
    ]
    entries += [
        dataclasses.replace(e, request_id=e.request_id + "b", created_at=first + timedelta(days=1)) for e in entries
    ]
    with database.session() as session:
        insert_usage(session, entries)
    reports = UsageReports(database)
    by_day = reports.report(None, this_month("day"), ("tenant", "model"))["data"]
    by_month = reports.report(None, this_month("none"), ("tenant", "model"))["data"]
    assert len(by_day) == 2 * len(by_month) == 12
    assert month_totals(by_day, ("tenant_id", "model")) == by_month


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database("llmaas_windows") as url:
        yield url


def _chat(base: str, key: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    return {
        "url": f"{base}/v1/chat/completions",
        "headers": {"authorization": f"Bearer {key}"},
        "json": {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body},
    }


def _leave_early(request: dict[str, Any], stream: bool) -> None:
    """A client that goes away before its answer ends (the slow engine takes ~10 s for 200 tokens)."""
    request["json"].update(max_tokens=200, stream=stream)
    if stream:
        with httpx.stream("POST", **request, timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_bytes())  # the first event, then the client hangs up
        return
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(**request, timeout=1.0)


def test_two_gateway_processes_share_their_windows_and_a_client_leaving_is_no_5xx(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = {"database_url": postgres_url}
    with (
        fake_gateway(tmp_path, seconds_per_token=0.05, log=tmp_path / "a.log", **settings) as a,
        fake_gateway(tmp_path, seconds_per_token=0.05, log=tmp_path / "b.log", **settings) as b,
    ):
        with admin_client(a.base) as admin:
            _, key = create_tenant(admin)
        for base, answered in ((a.base, 3), (b.base, 2)):
            for _ in range(answered):
                assert httpx.post(**_chat(base, key), timeout=30).status_code == 200
        assert httpx.post(**_chat(b.base, key, model="no-such-model"), timeout=30).status_code == 404
        _leave_early(_chat(a.base, key), stream=False)
        _leave_early(_chat(b.base, key), stream=True)
        operator = console(a.base, ADMIN_KEY)
        deadline = time.monotonic() + 30  # b writes its minutes every 5 s; the engine notices a hang-up at once
        while True:
            one = operator.get("/console/admin/service.json").json()["recent"]["windows"][0]
            seen = (one["answered"], one["refused"], one["disconnected"], one["server_error"])
            if seen == (5, 1, 2, 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert seen == (5, 1, 2, 0)
        assert one["latency_p50_seconds"] is not None and one["ttft_p50_seconds"] is not None
        with admin_client(a.base) as admin:
            exposition = admin.get("/metrics").text
        route = {"route": "/v1/chat/completions"}
        assert metric_value(exposition, "llmaas_http_requests_total", status="499", **route) == 1
        assert metric_value(exposition, "llmaas_http_requests_total", status="500", **route) == 0
    for log in ("a.log", "b.log"):
        text = (tmp_path / log).read_text()
        assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]
        assert " 499 " in text  # the access log says the client closed it


def test_usage_pages_name_keys_and_kinds(tmp_path: Path) -> None:
    with fake_gateway(tmp_path) as gateway, admin_client(gateway.base) as admin:
        tenant, key = create_tenant(admin)
        assert httpx.post(**_chat(gateway.base, key), timeout=30).status_code == 200
        prefix = admin.get(f"/admin/v1/tenants/{tenant['id']}/keys").json()["data"][0]["prefix"]
        database = open_database(GatewaySettings(data_dir=tmp_path))
        with database.session() as session:  # a fine-tuning job's usage, as the worker's billing writes it
            job = UsageEntry(
                "ftjob-1", tenant["id"], None, MODEL, "fine_tune", "succeeded", 900, 0, 0, datetime.now(UTC)
            )
            insert_usage(session, [job])
        database.dispose()
        deadline = time.monotonic() + 10  # the ledger writer flushes the chat's record within a second or so
        tenant_console = console(gateway.base, key)
        while "first · " not in (page := tenant_console.get("/console/usage").text) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert f"first · {prefix}…" in page and "fine-tuning" in page
        csv_text = tenant_console.get("/console/usage.csv").text
        header = csv_text.splitlines()[0].split(",")
        assert {"key_id", "key_name", "used_by", "model", "kind"} <= set(header)
        assert f"first · {prefix}…" in csv_text and "fine-tuning" in csv_text
        operator = console(gateway.base, ADMIN_KEY)
        everyone = operator.get("/console/admin/usage.csv").text
        assert tenant["name"] in everyone and f"first · {prefix}…" in everyone and "fine-tuning" in everyone
        assert tenant["name"] in operator.get("/console/admin/usage").text
