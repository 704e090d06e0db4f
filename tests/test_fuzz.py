"""Property-based fuzzing of every route in the app's own OpenAPI schema (schemathesis), ``/admin/v1``
included, against a real gateway process with real tenants on PostgreSQL (the instant fake engine stands in for
vLLM): valid and invalid inputs alike must never get a 5xx, and every error must have OpenAI's shape.

``LLMAAS_FUZZ_EXAMPLES`` sets the examples per route (default 25, a couple of minutes here); for a long run:

    LLMAAS_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case

from engine.settings import EngineSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.conftest import ADMIN_KEY, FAKE_GATEWAY, create_tenant, free_port, fresh_postgres_database, running

EXAMPLES = int(os.environ.get("LLMAAS_FUZZ_EXAMPLES", "25"))


@dataclass(frozen=True)
class Target:
    base: str
    tenant_key: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    with fresh_postgres_database("llmaas_fuzz") as url:
        env = {**os.environ, "LLMAAS_DATA_DIR": str(data), "LLMAAS_DATABASE_URL": url, "LLMAAS_ADMIN_KEY": ADMIN_KEY}
        with running([*FAKE_GATEWAY, "--port", str(port)], env, data / "gateway.log"):
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as admin:
                _, key = create_tenant(admin, "fuzzed", requests_per_minute=100_000, max_storage_bytes=10**8)
            yield Target(base, key)


def _app_schema() -> dict[str, Any]:
    """The schema the gateway serves at /openapi.json (built without starting anything)."""
    settings = GatewaySettings(data_dir=Path("/nonexistent"), admin_key=ADMIN_KEY)
    return create_app(settings, EngineSettings()).openapi()


schema = schemathesis.openapi.from_dict(_app_schema())
schema.config.generation.update(max_examples=EXAMPLES)


def _key_for(path: str, target: Target) -> str:
    return ADMIN_KEY if path.startswith(("/admin/", "/metrics")) else target.tenant_key


@schema.parametrize()
def test_no_input_reaches_a_5xx_and_every_error_has_openai_shape(case: Case, target: Target) -> None:
    auth = {"authorization": f"Bearer {_key_for(case.path, target)}"}
    response = case.call(base_url=target.base, headers=auth, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
