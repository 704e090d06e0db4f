"""Keys as operators expect, through the real gateway (the instant fake engine: admission is what is tested) and
the official ``openai`` client: a key's own monthly token and cost budgets beside its tenant's (a key over its
budget refused before the model runs while its sibling is served; other tenants untouched), set at creation and
changed with ``PATCH``, hostile values refused; a key made by a key within its maker's budgets; and
``last_used_at``, noted in memory and written at most once a minute per key (``gateway.tenancy.key_activity``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from gateway.clock import utcnow
from gateway.tenancy.key_activity import KeyActivity
from tests.support import MODEL
from tests.support.console import console, csrf_of
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import Setting, fake_gateway, gateway_env, llmaas
from tests.support.tenants import admin_client, create_tenant, openai_client

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("key-budgets"), key_activity_flush_seconds=0.2) as running:
        yield running.base


@pytest.fixture
def admin(base: str) -> Iterator[httpx.Client]:
    with admin_client(base) as client:
        yield client


def chat(key: str, base: str, max_tokens: int = 5) -> Any:
    return openai_client(base, key).chat.completions.create(model=MODEL, messages=HI, max_tokens=max_tokens)


def key_of(admin: httpx.Client, tenant_id: str, key_id: str) -> dict[str, Any]:
    keys = admin.get(f"/admin/v1/tenants/{tenant_id}/keys").json()["data"]
    return next(key for key in keys if key["id"] == key_id)


def new_key(admin: httpx.Client, tenant_id: str, **fields: Any) -> dict[str, Any]:
    made = admin.post(f"/admin/v1/tenants/{tenant_id}/keys", json=fields)
    assert made.status_code == 201, made.text
    answer: dict[str, Any] = made.json()
    return answer


def test_a_key_over_its_own_budget_is_refused_while_its_sibling_is_served(base: str, admin: httpx.Client) -> None:
    tenant, sibling = create_tenant(admin, "kb", monthly_token_budget=100_000)
    capped = new_key(admin, tenant["id"], name="capped", monthly_token_budget=60)
    assert capped["monthly_token_budget"] == 60 and capped["monthly_cost_budget"] is None
    _, stranger = create_tenant(admin, "kb-other")
    served = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(20):
            chat(capped["key"], base)
            served += 1
    assert 1 <= served < 20  # served until its own budget was spent, then refused
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "This API key exceeded its own monthly token budget: limit 60 tokens" in info.value.message
    assert chat(sibling, base).choices  # the tenant's other key is served
    assert chat(stranger, base).choices  # and other tenants are untouched
    time.sleep(1.2)  # the ledger writes in batches at most 1 s apart
    usage = admin.get("/admin/v1/usage", params={"tenant": tenant["id"], "group_by": "key", "bucket": "none"})
    by_key = {row["key_id"]: row for row in usage.json()["data"]}
    assert by_key[capped["id"]]["requests"] == served  # refused before the model ran: nothing recorded
    assert by_key[capped["id"]]["total_tokens"] <= 60
    lifted = admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{capped['id']}", json={"monthly_token_budget": None})
    assert lifted.status_code == 200 and lifted.json()["monthly_token_budget"] is None
    assert chat(capped["key"], base).choices  # the change applies at once (the key cache is told)


def test_a_key_cost_budget_is_checked_at_the_tenants_prices(base: str, admin: httpx.Client) -> None:
    prices = {MODEL: {"input": "100000", "output": "100000"}}  # USD per 1M tokens: 0.1 USD a token
    tenant, _ = create_tenant(admin, "kc", model_prices=prices)
    capped = new_key(admin, tenant["id"], monthly_cost_budget="1.5")
    assert Decimal(capped["monthly_cost_budget"]) == Decimal("1.5")
    with pytest.raises(openai.RateLimitError) as info:
        chat(capped["key"], base, max_tokens=50)  # needs up to 5 USD and more: refused before it runs
    assert info.value.code == "insufficient_quota" and "its own monthly cost budget" in info.value.message
    raised = admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{capped['id']}", json={"monthly_cost_budget": "100"})
    assert raised.status_code == 200
    assert chat(capped["key"], base, max_tokens=50).choices


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("monthly_token_budget", -1),
        ("monthly_token_budget", 2**63),
        ("monthly_token_budget", 1.5),
        ("monthly_token_budget", "ten"),
        ("monthly_token_budget", True),
        ("monthly_cost_budget", "-0.01"),
        ("monthly_cost_budget", "1e12"),
        ("monthly_cost_budget", "0.0000000001"),
        ("monthly_cost_budget", "NaN"),
        ("name", "x" * 129),
    ],
)
def test_hostile_key_budgets_are_refused(base: str, admin: httpx.Client, field: str, value: Any) -> None:
    tenant, _ = create_tenant(admin, "kh")
    key = new_key(admin, tenant["id"])
    for response in (
        admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={field: value}),
        admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{key['id']}", json={field: value}),
    ):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == field
    assert key_of(admin, tenant["id"], key["id"])["monthly_token_budget"] is None  # nothing changed


def test_a_key_is_changed_only_within_its_own_tenant(base: str, admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "ko")
    other, _ = create_tenant(admin, "ko-other")
    key = new_key(admin, tenant["id"], name="mine")
    across = admin.patch(f"/admin/v1/tenants/{other['id']}/keys/{key['id']}", json={"monthly_token_budget": 1})
    assert across.status_code == 404 and across.json()["error"]["param"] == "key_id"
    assert admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/key_nope", json={}).status_code == 404
    assert admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{key['id']}", json={"nope": 1}).status_code == 400
    assert admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{key['id']}", json={"name": None}).status_code == 400
    renamed = admin.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{key['id']}", json={"name": "renamed"})
    assert renamed.json()["name"] == "renamed" and renamed.json()["monthly_token_budget"] is None
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {new_key(admin, tenant['id'])['key']}"}) as t:
        refused = t.patch(f"/admin/v1/tenants/{tenant['id']}/keys/{key['id']}", json={"monthly_token_budget": 9})
    assert refused.status_code == 403  # only the operator changes a key's budgets
    audit = admin.get("/admin/v1/audit", params={"tenant": tenant["id"], "action": "key.update"}).json()["data"]
    assert [entry["details"]["fields"] for entry in audit] == [["name"]]


def test_a_key_made_by_a_key_stays_within_its_makers_budgets(base: str, admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "km")
    maker = new_key(admin, tenant["id"], key_manager=True, monthly_token_budget=1000, monthly_cost_budget="2")
    page = console(base, maker["key"])
    form = {"csrf": csrf_of(page, "/console/keys"), "name": "child"}
    larger = page.post("/console/keys", data={**form, "monthly_token_budget": "1001"})
    assert larger.status_code == 403 and "larger monthly_token_budget" in larger.text
    for hostile in ("-5", "1.5", "ten", "²"):
        refused = page.post("/console/keys", data={**form, "monthly_token_budget": hostile})
        assert refused.status_code == 400 and "monthly_token_budget" in refused.text, hostile
    made = page.post("/console/keys", data={**form, "monthly_token_budget": "500"})
    assert made.status_code == 200, made.text
    assert 'data-copy="#new-key"' in made.text  # shown once, with its copy button
    page.close()
    keys = admin.get(f"/admin/v1/tenants/{tenant['id']}/keys").json()["data"]
    child = next(key for key in keys if key["name"] == "child")
    assert child["monthly_token_budget"] == 500 and child["created_by_key_id"] == maker["id"]
    assert Decimal(child["monthly_cost_budget"]) == 2  # unasked: the maker's


def test_last_used_at_is_written_in_batches_not_per_request(base: str, admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "lu")
    key = new_key(admin, tenant["id"], name="used")
    idle = new_key(admin, tenant["id"], name="idle")
    assert key["last_used_at"] is None
    before = utcnow() - timedelta(seconds=1)
    chat(key["key"], base)
    deadline = time.monotonic() + 10
    while (first := key_of(admin, tenant["id"], key["id"])["last_used_at"]) is None:
        assert time.monotonic() < deadline, "last_used_at was never written"
        time.sleep(0.1)
    assert before <= datetime.fromisoformat(first) <= utcnow()  # when it was used
    for _ in range(3):
        chat(key["key"], base)
    time.sleep(0.6)  # several flush rounds: none writes again within the minute
    assert key_of(admin, tenant["id"], key["id"])["last_used_at"] == first
    assert key_of(admin, tenant["id"], idle["id"])["last_used_at"] is None


def test_key_activity_writes_each_key_at_most_once_a_minute() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0)
    writes: list[dict[str, datetime]] = []
    activity = KeyActivity(writes.append, clock=lambda: now)

    async def rounds() -> None:
        nonlocal now
        for _ in range(1000):
            activity.seen("key_a")
        await activity.flush()
        now += timedelta(seconds=30)
        activity.seen("key_a")
        activity.seen("key_b")
        await activity.flush()
        await activity.flush()  # nothing new: no write at all
        now += timedelta(seconds=31)
        activity.seen("key_a")
        await activity.flush()

    asyncio.run(rounds())
    start = datetime(2026, 1, 1, 12, 0, 0)
    assert writes == [
        {"key_a": start},
        {"key_b": start + timedelta(seconds=30)},  # key_a moved by 30 s only: not yet
        {"key_a": start + timedelta(seconds=61)},
    ]


def test_keys_show_in_the_tenant_console_by_name_with_budgets(base: str, admin: httpx.Client) -> None:
    tenant, first = create_tenant(admin, "kv")
    capped = new_key(admin, tenant["id"], name="ci-bot", monthly_token_budget=1234)
    page = console(base, first)
    text = page.get("/console/keys").text
    page.close()
    assert "ci-bot" in text and "1,234" in text
    assert capped["key"] not in text and capped["prefix"] in text
    assert text.count("this session</span>") == 1
    session_row = text.split('data-name="first"', 1)[1].split("</tr>", 1)[0]
    assert "this session" in session_row  # the key this console session signed in with


async def _burst(bases: list[str], key: str, count: int) -> list[int]:
    body = {"model": MODEL, "messages": HI, "max_tokens": 4}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        responses = await asyncio.gather(
            *(http.post(f"{bases[i % len(bases)]}/v1/chat/completions", json=body) for i in range(count))
        )
    return [response.status_code for response in responses]


def test_a_keys_budget_holds_across_gateways_on_postgresql_and_redis(tmp_path: Path) -> None:
    """Two gateways on one PostgreSQL and one Redis: a key's own budget is one budget, whichever gateway admits
    its requests, and its last use is written by either without ever going back."""
    with fresh_postgres_database("llmaas_keys") as url:
        settings: dict[str, Setting] = {
            "database_url": url,
            "redis_url": "redis://127.0.0.1:6379/13",
            "key_activity_flush_seconds": 0.2,
        }
        with (
            fake_gateway(tmp_path, log=tmp_path / "a.log", **settings) as a,
            fake_gateway(tmp_path, log=tmp_path / "b.log", **settings) as b,
            admin_client(a.base) as admin,
        ):
            tenant, sibling = create_tenant(admin, "kr")
            capped = new_key(admin, tenant["id"], monthly_token_budget=200)
            codes = asyncio.run(_burst([a.base, b.base], capped["key"], 40))
            assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) == {200, 429}
            assert asyncio.run(_burst([a.base, b.base], sibling, 4)) == [200] * 4
            deadline = time.monotonic() + 10
            while key_of(admin, tenant["id"], capped["id"])["last_used_at"] is None:
                assert time.monotonic() < deadline, "last_used_at was never written"
                time.sleep(0.1)
        used = _tokens_by_key(url, tenant["id"])  # written by both gateways at their graceful stop
    assert used[capped["id"]] <= 200  # one budget across the two gateways
    assert used[capped["id"]] > 0 and used[next(k for k in used if k != capped["id"])] > 0


def _tokens_by_key(database_url: str, tenant_id: str) -> dict[str, int]:
    query = text(
        "SELECT key_id, SUM(prompt_tokens + completion_tokens) FROM usage_records WHERE tenant_id = :t GROUP BY key_id"
    )
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {str(key): int(tokens) for key, tokens in conn.execute(query, {"t": tenant_id}).all()}
    finally:
        engine.dispose()


def test_the_cli_creates_a_key_with_its_own_budgets(tmp_path: Path) -> None:
    env = gateway_env(tmp_path)
    assert llmaas(env, "tenants", "create", "acme").returncode == 0
    made = llmaas(env, "keys", "create", "acme", "--monthly-token-budget", "500", "--monthly-cost-budget", "2.5")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["monthly_token_budget"] == 500 and Decimal(key["monthly_cost_budget"]) == Decimal("2.5")
    refused = llmaas(env, "keys", "create", "acme", "--monthly-cost-budget", "-1")
    assert refused.returncode == 1 and "monthly_cost_budget" in refused.stderr and "Traceback" not in refused.stderr
