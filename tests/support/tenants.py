"""Tenants and keys made through the admin API, as an operator makes them, and clients that use them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import openai

from tests.support import ADMIN_KEY


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


def tenant_key(base: str, name: str = "t", key: Mapping[str, Any] | None = None, **quotas: Any) -> tuple[str, str]:
    """``create_tenant`` on the gateway at ``base`` with the admin key: the tenant's id and its key."""
    with admin_client(base) as admin:
        tenant, secret = create_tenant(admin, name, key, **quotas)
    return tenant["id"], secret


def openai_client(base: str, key: str, **options: Any) -> openai.OpenAI:
    """The official client on ``base``'s ``/v1`` with ``key`` (no retries: each request is the test's)."""
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, **{"max_retries": 0, "timeout": 120, **options})
