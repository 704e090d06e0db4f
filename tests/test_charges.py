"""The one billing rule for requests that do not finish (``gateway/accounting/charges.py``): the client pays
for exactly what it received. Through the real app (in process, fake engines that break on demand): a stream
our engine breaks after two tokens is billed for the prompt and those two, a failure before any output (a
stream's or a non-streamed request's) is billed nothing, and each leaves its one ledger record; through a real
gateway process, a stream the client leaves is billed for its prompt and the tokens that went out."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from engine.fake import FakeEngine, fake_backend
from engine.protocol import AdapterRef, CompletionDelta, EngineError, SamplingOptions
from engine.settings import EngineSettings
from gateway.accounting.charges import charged_tokens
from gateway.app import create_app
from gateway.db import UsageRecord
from gateway.settings import GatewaySettings
from gateway.state import state_of
from gateway.tenancy.models import KeyCreate, TenantCreate
from tests.conftest import ADMIN_KEY, FAKE_GATEWAY, MODEL, free_port, running


def test_the_rule() -> None:
    assert charged_tokens("completed", 10, 7) == (10, 7)
    assert charged_tokens("aborted", 10, 3) == (10, 3)  # the client left after 3 streamed tokens
    assert charged_tokens("aborted", 10, 0) == (10, 0)  # the client left before any: its prompt was read
    assert charged_tokens("failed", 10, 2) == (10, 2)  # we broke after 2 reached the client
    assert charged_tokens("failed", 10, 0) == (0, 0)  # we broke before any output reached it


class BreakingEngine(FakeEngine):
    """Streams ``tokens_before`` tokens ("o"), then breaks."""

    def __init__(self, tokens_before: int) -> None:
        super().__init__()
        self.tokens_before = tokens_before

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[CompletionDelta]]:
        for _ in range(self.tokens_before):
            yield [CompletionDelta(0, "o", [111])]
        raise EngineError("engine core died")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, BreakingEngine, openai.OpenAI]]:
    engine = BreakingEngine(2)
    settings = GatewaySettings(data_dir=tmp_path, admin_key="sk-admin-unit-0123456789")
    app = create_app(settings, EngineSettings(served_model_name="fake"), backend_factory=fake_backend(engine))
    with TestClient(app) as http:
        tenancy = state_of(app).tenancy
        tenant = tenancy.create_tenant(TenantCreate(name="charges"))
        key = tenancy.create_key(tenant.id, KeyCreate()).key
        yield http, engine, openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


def ledger_of(http: TestClient, request_id: str) -> tuple[int, int, str]:
    """The request's record, as the database has it once the writer flushed (the app stopping flushes too)."""
    app = http.app
    state = state_of(app)  # type: ignore[arg-type]
    state.admission._ledger.wait_flushed()
    with state.tenancy.db.sessions() as session:
        record = session.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)).one()
        return record.prompt_tokens, record.completion_tokens, record.outcome


def test_a_stream_we_break_after_output_is_billed_the_prompt_and_what_was_streamed(
    gateway: tuple[TestClient, BreakingEngine, openai.OpenAI],
) -> None:
    http, _, client = gateway
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=client.auth_headers) as response:
        lines = [line for line in response.iter_lines() if line]
        request_id = response.headers["x-request-id"]
    assert sum('"content":"o"' in line for line in lines) == 2
    assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"
    prompt, completion, outcome = ledger_of(http, request_id)
    assert prompt > 0 and (completion, outcome) == (2, "failed")


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_before_any_output_is_billed_nothing(
    gateway: tuple[TestClient, BreakingEngine, openai.OpenAI], stream: bool
) -> None:
    http, engine, client = gateway
    engine.tokens_before = 0 if stream else 2  # non-streamed: tokens were generated, none reached the client
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = http.post("/v1/chat/completions", json=body, headers=client.auth_headers)
    assert response.status_code == (200 if stream else 500)
    assert ledger_of(http, response.headers["x-request-id"]) == (0, 0, "failed")


def test_a_stream_the_client_leaves_is_billed_the_prompt_and_what_was_streamed(tmp_path: Path) -> None:
    """Through a real gateway process and a real socket: what went out before the client left, no more."""
    port = free_port()
    env = {**os.environ, "LLMAAS_DATA_DIR": str(tmp_path), "LLMAAS_ADMIN_KEY": ADMIN_KEY}
    command = [*FAKE_GATEWAY, "--port", str(port), "--seconds-per-token", "0.05"]
    base = f"http://127.0.0.1:{port}"
    with running(command, env, tmp_path / "gateway.log"):
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        tenant = httpx.post(f"{base}/admin/v1/tenants", json={"name": "leaves"}, headers=admin).json()
        key = httpx.post(f"{base}/admin/v1/tenants/{tenant['id']}/keys", json={}, headers=admin).json()["key"]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
        received = 0
        with (
            httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}) as http,
            http.stream("POST", "/v1/chat/completions", json=body, headers={"x-client-request-id": "leaves"}) as r,
        ):
            for line in r.iter_lines():
                received += '"content":"' in line and '"content":""' not in line
                if received == 5:
                    break  # and the connection closes
        time.sleep(1)
    engine = create_engine(f"sqlite:///{tmp_path / 'llmaas.db'}")
    with engine.connect() as conn:
        prompt, completion, outcome = conn.execute(
            text(
                "SELECT prompt_tokens, completion_tokens, outcome FROM usage_records WHERE client_request_id = 'leaves'"
            )
        ).one()
    engine.dispose()
    assert outcome == "aborted" and prompt > 0
    assert 5 <= completion <= 6  # the 5 read, and at most the one frame on its way when the client left
