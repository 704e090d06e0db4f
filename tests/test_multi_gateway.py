"""Several gateway processes on one PostgreSQL and one Redis (the instant fake engine stands in for vLLM:
what is tested here is admission and metering), graceful shutdown, and the management CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ADMIN_KEY, FAKE_GATEWAY, REPO, free_port, fresh_postgres_database, running

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database("llmaas_multi") as url:
        yield url


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LLMAAS_DATA_DIR": str(tmp_path), "LLMAAS_ADMIN_KEY": ADMIN_KEY, **extra}


def _tenant_with_key(base: str, **quotas: object) -> tuple[str, str]:
    tenant = httpx.post(f"{base}/admin/v1/tenants", json={"name": f"t-{uuid.uuid4().hex[:8]}", **quotas}, headers=ADMIN)
    assert tenant.status_code == 201, tenant.text
    key = httpx.post(f"{base}/admin/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=ADMIN)
    return tenant.json()["id"], key.json()["key"]


async def _burst(bases: list[str], key: str, count: int) -> list[int]:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        responses = await asyncio.gather(
            *(http.post(f"{bases[i % len(bases)]}/v1/chat/completions", json=body) for i in range(count))
        )
    return [r.status_code for r in responses]


def test_two_gateways_on_one_redis_never_exceed_the_limit(tmp_path: Path, postgres_url: str) -> None:
    env = _env(tmp_path, LLMAAS_DATABASE_URL=postgres_url, LLMAAS_REDIS_URL="redis://127.0.0.1:6379/14")
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    with (
        running([*FAKE_GATEWAY, "--port", str(ports[0])], env, tmp_path / "a.log"),
        running([*FAKE_GATEWAY, "--port", str(ports[1])], env, tmp_path / "b.log"),
    ):
        tenant_id, key = _tenant_with_key(bases[0], requests_per_minute=50)
        codes = asyncio.run(_burst(bases, key, 200))
        assert codes.count(200) == 50
        assert codes.count(429) == 150
        # A tenant created through one gateway exists for the other (shared database).
        _, budget_key = _tenant_with_key(bases[1], monthly_token_budget=300)
        budget_codes = asyncio.run(_burst(bases, budget_key, 40))
        assert budget_codes.count(200) >= 1
    # Both gateways stopped gracefully: every admitted request is in the ledger.
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM usage_records WHERE tenant_id = :t"), {"t": tenant_id}).scalar()
    engine.dispose()
    assert rows == 50


def test_graceful_shutdown_writes_every_usage_record(tmp_path: Path) -> None:
    env = _env(tmp_path, LLMAAS_METER_FLUSH_INTERVAL_SECONDS="1")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "g.log").open("ab")
    proc = subprocess.Popen([*FAKE_GATEWAY, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            asyncio.run(asyncio.sleep(0.2))
        tenant_id, key = _tenant_with_key(base)
        codes = asyncio.run(_burst([base], key, 30))
        assert codes == [200] * 30
        proc.send_signal(signal.SIGTERM)  # before the next batch is due
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    engine = create_engine(f"sqlite:///{tmp_path / 'llmaas.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM usage_records WHERE tenant_id = :t"), {"t": tenant_id}).scalar()
    engine.dispose()
    assert rows == 30


def _cli(env: dict[str, str], *args: str) -> object:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else result.stdout


def test_cli_manages_tenants_keys_and_usage(tmp_path: Path) -> None:
    env = _env(tmp_path)
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
    port = free_port()
    with running([*FAKE_GATEWAY, "--port", str(port)], env, tmp_path / "cli.log"):
        codes = asyncio.run(_burst([f"http://127.0.0.1:{port}"], key["key"], 3))
        assert codes == [200, 200, 200]
    usage = _cli(env, "usage", "acme", "--bucket", "none", "--group-by", "model")
    assert isinstance(usage, dict) and usage["totals"]["requests"] == 3
    csv_text = _cli(env, "usage", "acme", "--csv")
    assert isinstance(csv_text, str) and csv_text.startswith("tenant_id,key_id,model,kind,period_start")
    revoked = _cli(env, "keys", "revoke", "acme", key["id"])
    assert isinstance(revoked, dict) and revoked["status"] == "revoked"
    failed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tenants", "show", "nobody"], cwd=REPO, env=env, capture_output=True
    )
    assert failed.returncode == 1
    assert b"No tenant" in failed.stderr
