"""Several gateway processes on one PostgreSQL and one Redis (the instant fake engine stands in for vLLM:
what is tested here is admission and metering), graceful shutdown, and the management CLI."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import MODEL
from tests.support.databases import fresh_postgres_database, ledger_rows
from tests.support.gateway_process import fake_gateway, gateway_env, llmaas
from tests.support.tenants import tenant_key


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database("llmaas_multi") as url:
        yield url


async def _burst(bases: list[str], key: str, count: int) -> list[int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        responses = await asyncio.gather(
            *(http.post(f"{bases[i % len(bases)]}/v1/chat/completions", json=body) for i in range(count))
        )
    return [r.status_code for r in responses]


def test_two_gateways_on_one_redis_never_exceed_the_limit(tmp_path: Path, postgres_url: str) -> None:
    settings = {"database_url": postgres_url, "redis_url": "redis://127.0.0.1:6379/14"}
    with (
        fake_gateway(tmp_path, log=tmp_path / "a.log", **settings) as a,
        fake_gateway(tmp_path, log=tmp_path / "b.log", **settings) as b,
    ):
        bases = [a.base, b.base]
        tenant_id, key = tenant_key(bases[0], requests_per_minute=50)
        codes = asyncio.run(_burst(bases, key, 200))
        assert codes.count(200) == 50
        assert codes.count(429) == 150
        # A tenant created through one gateway exists for the other (shared database).
        _, budget_key = tenant_key(bases[1], monthly_token_budget=300)
        budget_codes = asyncio.run(_burst(bases, budget_key, 40))
        assert budget_codes.count(200) >= 1
    # Both gateways stopped gracefully: every admitted request is in the ledger.
    assert len(ledger_rows(postgres_url, tenant_id)) == 50


def test_graceful_shutdown_writes_every_usage_record(tmp_path: Path) -> None:
    with fake_gateway(tmp_path, meter_flush_interval_seconds=1) as gateway:
        tenant_id, key = tenant_key(gateway.base)
        codes = asyncio.run(_burst([gateway.base], key, 30))
        assert codes == [200] * 30
        gateway.process.send_signal(signal.SIGTERM)  # before the next batch is due
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert gateway.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert len(ledger_rows(f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id)) == 30


def _cli(env: dict[str, str], *args: str) -> object:
    result = llmaas(env, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else result.stdout


def test_cli_manages_tenants_keys_and_usage(tmp_path: Path) -> None:
    env = gateway_env(tmp_path)
    tenant = _cli(env, "tenants", "create", "acme", "--rpm", "5", "--monthly-tokens", "1000")
    assert isinstance(tenant, dict)
    assert tenant["requests_per_minute"] == 5
    key = _cli(env, "keys", "create", "acme", "--name", "ci", "--model", "smollm2-135m-instruct")
    assert isinstance(key, dict)
    assert key["key"].startswith("sk-") and key["key_manager"] is False
    manager = _cli(env, "keys", "create", "acme", "--key-manager")
    assert isinstance(manager, dict) and manager["key_manager"] is True
    listed = _cli(env, "keys", "list", "acme")
    assert isinstance(listed, list) and "key" not in listed[0]
    updated = _cli(env, "tenants", "update", "acme", "--tpm", "900")
    assert isinstance(updated, dict) and updated["tokens_per_minute"] == 900
    with fake_gateway(tmp_path, log=tmp_path / "cli.log") as gateway:
        codes = asyncio.run(_burst([gateway.base], key["key"], 3))
        assert codes == [200, 200, 200]
    usage = _cli(env, "usage", "acme", "--bucket", "none", "--group-by", "model")
    assert isinstance(usage, dict) and usage["totals"]["requests"] == 3
    csv_text = _cli(env, "usage", "acme", "--csv")
    assert isinstance(csv_text, str) and csv_text.startswith("tenant_id,key_id,model,kind,period_start")
    revoked = _cli(env, "keys", "revoke", "acme", key["id"])
    assert isinstance(revoked, dict) and revoked["status"] == "revoked"
    failed = llmaas(env, "tenants", "show", "nobody")
    assert failed.returncode == 1
    assert "No tenant" in failed.stderr
