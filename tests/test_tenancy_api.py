"""Tenants, keys, quotas and metering through the real gateway: the admin API over HTTP, and tenants
through the official ``openai`` client (every status maps to the SDK's exception class)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import ADMIN_KEY, MODEL
from tests.support.metrics import metric_value
from tests.support.tenants import admin_usage, create_tenant, openai_client

HI = [{"role": "user", "content": "Hi"}]


def ledger(admin: httpx.Client, tenant_id: str, **params: Any) -> dict[str, Any]:
    response = admin.get("/admin/v1/usage", params={"tenant": tenant_id, "bucket": "none", **params})
    assert response.status_code == 200, response.text
    return response.json()


# -- authentication ----------------------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_401(server: str) -> None:
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        openai_client(server, "sk-not-a-key").chat.completions.create(model=MODEL, messages=HI)
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, "sk-not-a-key").models.list()


def test_admin_and_tenant_keys_do_not_cross(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "cross")
    with pytest.raises(openai.PermissionDeniedError) as info:
        openai_client(server, ADMIN_KEY).models.list()
    assert info.value.status_code == 403
    as_tenant = httpx.get(f"{server}/admin/v1/tenants", headers={"authorization": f"Bearer {key}"})
    assert as_tenant.status_code == 403
    assert as_tenant.json()["error"]["type"] == "permission_error"
    assert httpx.get(f"{server}/admin/v1/tenants").status_code == 401
    assert httpx.get(f"{server}/admin/v1/tenants", headers={"authorization": "Bearer sk-wrong"}).status_code == 401


def test_revoked_key_stops_at_once_on_this_gateway(server: str, admin: httpx.Client) -> None:
    tenant, key = create_tenant(admin, "revoke")
    client = openai_client(server, key)
    assert client.models.list().data  # cached now
    keys = admin.get(f"/admin/v1/tenants/{tenant['id']}/keys").json()["data"]
    assert [k["status"] for k in keys] == ["active"]
    assert "key" not in keys[0]
    assert key.startswith(keys[0]["prefix"])
    revoked = admin.delete(f"/admin/v1/tenants/{tenant['id']}/keys/{keys[0]['id']}")
    assert revoked.json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert "revoked" in info.value.message


def test_expired_key_is_401(server: str, admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "expiry")
    created = admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={"expires_in_days": 1.5 / 86400})
    client = openai_client(server, created.json()["key"])
    assert client.models.list().data
    time.sleep(1.6)
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert "expired" in info.value.message


def test_suspended_tenant_is_403_until_resumed(server: str, admin: httpx.Client) -> None:
    tenant, key = create_tenant(admin, "suspend")
    client = openai_client(server, key)
    assert admin.post(f"/admin/v1/tenants/{tenant['id']}/suspend").json()["status"] == "suspended"
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert info.value.code == "tenant_suspended"
    admin.post(f"/admin/v1/tenants/{tenant['id']}/resume")
    assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).choices


def test_key_restricted_to_models(server: str, admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "restricted")
    created = admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={"allowed_models": ["another-model"]})
    client = openai_client(server, created.json()["key"])
    assert client.models.list().data == []
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert info.value.code == "model_not_allowed"


# -- admin API ---------------------------------------------------------------------------------------------


def test_admin_tenant_crud_and_validation(admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "crud", requests_per_minute=10)
    assert admin.post("/admin/v1/tenants", json={"name": tenant["name"]}).status_code == 409
    bad = admin.post("/admin/v1/tenants", json={"name": "Bad Name!"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "name"
    assert admin.post("/admin/v1/tenants", json={"name": "x", "rpm": 5}).status_code == 400  # typo caught
    patched = admin.patch(f"/admin/v1/tenants/{tenant['name']}", json={"tokens_per_minute": 500})
    assert patched.json()["tokens_per_minute"] == 500
    assert patched.json()["requests_per_minute"] == 10
    assert tenant["id"] in [t["id"] for t in admin.get("/admin/v1/tenants").json()["data"]]
    assert admin.delete(f"/admin/v1/tenants/{tenant['id']}").json()["deleted"] is True
    missing = admin.get(f"/admin/v1/tenants/{tenant['id']}")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


def test_admin_api_is_in_the_openapi_document(server: str) -> None:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert "/admin/v1/tenants" in paths
    assert "/admin/v1/tenants/{tenant}/keys" in paths
    assert "/admin/v1/usage" in paths


# -- limits ------------------------------------------------------------------------------------------------


def test_rate_limit_headers_and_429(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "rpm", requests_per_minute=2, tokens_per_minute=100_000)
    client = openai_client(server, key)
    first = client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=2)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-reset-tokens" in first.headers
    client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after-ms"]) > 0
    assert int(info.value.response.headers["retry-after"]) >= 1
    listing = client.models.with_raw_response.list()  # not a generation: headers without spending
    assert listing.headers["x-ratelimit-remaining-requests"] == "0"


def test_200_concurrent_requests_against_rpm_50_admit_exactly_50(server: str, admin: httpx.Client) -> None:
    tenant, key = create_tenant(admin, "burst", requests_per_minute=50)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server, headers={"authorization": f"Bearer {key}"}, timeout=120) as http:
            body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
            responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(200)))
        return [r.status_code for r in responses]

    codes = asyncio.run(burst())
    assert codes.count(200) == 50
    assert codes.count(429) == 150
    assert admin_usage(admin, tenant["id"], 50)["requests"] == 50


def test_budget_exhausted_is_429_insufficient_quota_without_retries(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "budget", monthly_token_budget=10)
    retrying = openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=2)
    before = metric_value(admin.get("/metrics").text, "llmaas_http_requests_total", status="429")
    with pytest.raises(openai.RateLimitError) as info:
        retrying.chat.completions.create(model=MODEL, messages=HI, max_tokens=5)
    assert info.value.code == "insufficient_quota"
    assert info.value.body["type"] == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    after = metric_value(admin.get("/metrics").text, "llmaas_http_requests_total", status="429")
    assert after - before == 1  # the SDK did not retry


def test_concurrent_requests_never_exceed_a_token_budget(server: str, admin: httpx.Client) -> None:
    budget = 400
    tenant, key = create_tenant(admin, "tightbudget", monthly_token_budget=budget)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server, headers={"authorization": f"Bearer {key}"}, timeout=120) as http:
            body = {"model": MODEL, "messages": HI, "max_tokens": 16}
            responses = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(30)))
        return [r.status_code for r in responses]

    codes = asyncio.run(burst())
    assert set(codes) == {200, 429}
    totals = admin_usage(admin, tenant["id"], codes.count(200))
    assert totals["requests"] == codes.count(200)
    assert totals["total_tokens"] <= budget


def test_max_tokens_cap(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "cap", max_tokens_cap=4)
    client = openai_client(server, key)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5)
    assert info.value.code == "max_tokens_above_cap"
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], temperature=0
    )
    assert reply.usage.completion_tokens == 4
    assert reply.choices[0].finish_reason == "length"


# -- metering ----------------------------------------------------------------------------------------------


def test_ledger_equals_client_visible_usage_over_a_mixed_run(server: str, admin: httpx.Client) -> None:
    tenant, key = create_tenant(admin, "ledger", model_prices={MODEL: {"input": "0.5", "output": "1.5"}})
    client = openai_client(server, key)
    shown_prompt = shown_completion = 0
    for i in range(3):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Say {i}"}], max_tokens=6
        )
        shown_prompt += reply.usage.prompt_tokens
        shown_completion += reply.usage.completion_tokens
    reply = client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=3, n=2)
    shown_prompt += reply.usage.prompt_tokens
    shown_completion += reply.usage.completion_tokens
    for chunk in client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=6, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage:
            shown_prompt += chunk.usage.prompt_tokens
            shown_completion += chunk.usage.completion_tokens
    # Rejected before admission: no record.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HI, max_tokens=100_000)
    totals = admin_usage(admin, tenant["id"], 5)
    assert totals["requests"] == 5
    assert totals["prompt_tokens"] == shown_prompt
    assert totals["completion_tokens"] == shown_completion
    expected_cost = (shown_prompt * 0.5 + shown_completion * 1.5) / 1e6
    assert float(totals["cost"]) == pytest.approx(expected_cost, rel=1e-6)

    # An abandoned stream is recorded with the tokens generated until the abort.
    body = {"model": MODEL, "messages": HI, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=server, headers={"authorization": f"Bearer {key}"}, timeout=60) as raw,
        raw.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break
    totals = admin_usage(admin, tenant["id"], 6)
    assert totals["requests"] == 6
    abandoned = totals["completion_tokens"] - shown_completion
    assert 1 <= abandoned < 1000

    own = client.get("/usage", cast_to=object, options={"params": {"bucket": "none", "group_by": "model"}})
    assert own["totals"] == totals
    csv_text = httpx.get(
        f"{server}/v1/usage", params={"format": "csv"}, headers={"authorization": f"Bearer {key}"}
    ).text
    assert csv_text.splitlines()[0].startswith("key_id,model,kind,period_start")


def test_usage_is_tenant_scoped(server: str, admin: httpx.Client) -> None:
    first, first_key = create_tenant(admin, "scope-a")
    _, second_key = create_tenant(admin, "scope-b")
    openai_client(server, first_key).chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    admin_usage(admin, first["id"], 1)
    keys = admin.get(f"/admin/v1/tenants/{first['id']}/keys").json()["data"]
    theirs = openai_client(server, second_key).get(
        "/usage", cast_to=object, options={"params": {"key_id": keys[0]["id"]}}
    )
    assert theirs["data"] == []


def test_database_holds_no_plaintext_key(server: str, admin: httpx.Client, server_data_dir: Path) -> None:
    _, key = create_tenant(admin, "plaintext")
    openai_client(server, key).models.list()
    raw = b"".join(p.read_bytes() for p in server_data_dir.glob("llmaas.db*"))
    assert raw
    assert key.encode() not in raw
    assert key[12:].encode() not in raw


def test_the_user_field_is_kept_with_the_usage_record(server: str, admin: httpx.Client, server_data_dir: Path) -> None:
    import sqlite3

    tenant, key = create_tenant(admin, "enduser")
    openai_client(server, key).chat.completions.create(model=MODEL, messages=HI, max_tokens=2, user="end-user-42")
    admin_usage(admin, tenant["id"], 1)
    with sqlite3.connect(server_data_dir / "llmaas.db") as db:
        rows = db.execute("SELECT end_user FROM usage_records WHERE tenant_id = ?", (tenant["id"],)).fetchall()
    assert rows == [("end-user-42",)]
