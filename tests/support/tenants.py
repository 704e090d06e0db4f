"""Tenants and keys made through the admin API, as an operator makes them, and clients that use them."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai

from adapters.registry import AdapterRegistry
from gateway.app import adapter_registry
from gateway.bootstrap import open_database
from gateway.settings import GatewaySettings
from tests.support import ADMIN_KEY, MODEL


def create_tenant(
    admin: httpx.Client, name: str = "t", key: Mapping[str, Any] | None = None, **quotas: Any
) -> tuple[dict[str, Any], str]:
    """A new tenant (``name`` made unique, ``quotas`` its other fields) and a fresh API key of it named "first"
    (``key``: the key's other fields, e.g. ``key_manager``)."""
    response = admin.post("/admin/v1/tenants", json={"name": f"{name}-{os.urandom(3).hex()}", **quotas})
    assert response.status_code == 201, response.text
    tenant: dict[str, Any] = response.json()
    made = admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "first", **(key or {})})
    assert made.status_code == 201, made.text
    return tenant, made.json()["key"]


@contextmanager
def admin_client(base: str, admin_key: str = ADMIN_KEY, timeout: float = 60) -> Iterator[httpx.Client]:
    """The operator's HTTP client."""
    with httpx.Client(base_url=base, timeout=timeout, headers={"authorization": f"Bearer {admin_key}"}) as client:
        yield client


def ledgered_usage(base: str, key: str, requests: int) -> dict[str, Any]:
    """The key's ``/v1/usage`` once the ledger holds ``requests`` requests: the ledger writes what the journal made
    durable every 0.5 s, later on a loaded machine, and the console's pages read the ledger."""
    deadline = time.monotonic() + 20
    while True:
        usage: dict[str, Any] = httpx.get(f"{base}/v1/usage", headers={"authorization": f"Bearer {key}"}).json()
        if usage["totals"]["requests"] >= requests:
            return usage
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)


def admin_usage(admin: httpx.Client, tenant_id: str, requests: int, kind: str | None = None) -> dict[str, Any]:
    """The tenant's usage totals from ``/admin/v1/usage`` (of one ``kind`` of use: ``eval``, ``fine_tune``, ...)
    once they count at least ``requests`` requests: the ledger writes what the journal made durable every 0.5 s.
    After 10 s, whatever they count, for the test's assert to show."""
    params = {"tenant": tenant_id} | ({"bucket": "none", "group_by": "kind"} if kind else {})
    deadline = time.monotonic() + 10
    while True:
        response = admin.get("/admin/v1/usage", params=params)
        assert response.status_code == 200, response.text
        report = response.json()
        rows = {row["kind"]: row for row in report["data"]} if kind else {}
        usage: dict[str, Any] = rows.get(kind, {}) if kind else report["totals"]
        if usage.get("requests", 0) >= requests or time.monotonic() > deadline:
            return usage
        time.sleep(0.2)


def tenant_key(base: str, name: str = "t", key: Mapping[str, Any] | None = None, **quotas: Any) -> tuple[str, str]:
    """``create_tenant`` on the gateway at ``base`` with the admin key: the tenant's id and its key."""
    with admin_client(base) as admin:
        tenant, secret = create_tenant(admin, name, key, **quotas)
    return tenant["id"], secret


def openai_client(base: str, key: str, **options: Any) -> openai.OpenAI:
    """The official client on ``base``'s ``/v1`` with ``key`` (no retries: each request is the test's)."""
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, **{"max_retries": 0, "timeout": 120, **options})


def register_adapter(
    data_dir: Path, tenant_id: str, source: Path | None = None, *, database_url: str | None = None
) -> str:
    """A fine-tuned model of the tenant in the registry of the gateway on ``data_dir`` (and ``database_url``, if its
    database is not the SQLite file there), as the worker leaves it: its adapter dir holds ``source``'s files (a peft
    adapter), or nothing (for stand-ins that never read it)."""
    # Unnamed, the database is what the environment's LLMAAS_DATABASE_URL says (or the SQLite file in ``data_dir``).
    settings = GatewaySettings(data_dir=data_dir, **({"database_url": database_url} if database_url else {}))
    database = open_database(settings)
    registry: AdapterRegistry = adapter_registry(database, settings)
    job_id = f"ftjob-{uuid.uuid4().hex}"
    adapter_dir = registry.job_dir(job_id) / "adapter"
    if source is None:
        adapter_dir.mkdir(parents=True)
    else:
        shutil.copytree(source, adapter_dir)
    name = f"ft:{MODEL}:t:{job_id[6:14]}:{job_id[6:14]}"
    with database.sessions.begin() as session:
        registry.register(
            session, name=name, tenant_id=tenant_id, base_model=MODEL, job_id=job_id, adapter_dir=adapter_dir
        )
    database.dispose()
    return name
