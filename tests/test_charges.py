"""The one billing rule for requests that do not finish (``gateway/accounting/charges.py``): the client pays
for exactly what it received. Through the real app (in process, fake engines that break on demand): a stream
our engine breaks after two tokens is billed for the prompt and those two, a failure before any output (a
stream's or a non-streamed request's) is billed nothing, and each leaves its one ledger record; through a real
gateway process, a stream the client leaves is billed for its prompt and the tokens that went out."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from gateway.accounting.charges import charged_tokens
from gateway.db import UsageRecord
from tests.support import MODEL
from tests.support.databases import ledger_rows
from tests.support.gateway_process import fake_gateway
from tests.support.in_process import BreakingEngine, InProcessGateway
from tests.support.tenants import tenant_key


def test_the_rule() -> None:
    assert charged_tokens("completed", 10, 7) == (10, 7)
    assert charged_tokens("aborted", 10, 3) == (10, 3)  # the client left after 3 streamed tokens
    assert charged_tokens("aborted", 10, 0) == (10, 0)  # the client left before any: its prompt was read
    assert charged_tokens("failed", 10, 2) == (10, 2)  # we broke after 2 reached the client
    assert charged_tokens("failed", 10, 0) == (0, 0)  # we broke before any output reached it


@pytest.fixture
def gateway(in_process: Callable[..., InProcessGateway]) -> tuple[InProcessGateway, BreakingEngine, openai.OpenAI]:
    engine = BreakingEngine("oo")
    gateway = in_process(engine)
    return gateway, engine, gateway.tenant("charges")[2]


def ledger_of(gateway: InProcessGateway, request_id: str) -> tuple[int, int, str]:
    """The request's record, as the database has it once the writer flushed (the app stopping flushes too)."""
    gateway.state.admission._ledger.wait_flushed()
    with gateway.state.tenancy.db.sessions() as session:
        record = session.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id)).one()
        return record.prompt_tokens, record.completion_tokens, record.outcome


def test_a_stream_we_break_after_output_is_billed_the_prompt_and_what_was_streamed(
    gateway: tuple[InProcessGateway, BreakingEngine, openai.OpenAI],
) -> None:
    app, _, client = gateway
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with app.http.stream("POST", "/v1/chat/completions", json=body, headers=client.auth_headers) as response:
        lines = [line for line in response.iter_lines() if line]
        request_id = response.headers["x-request-id"]
    assert sum('"content":"o"' in line for line in lines) == 2
    assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"
    prompt, completion, outcome = ledger_of(app, request_id)
    assert prompt > 0 and (completion, outcome) == (2, "failed")


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_before_any_output_is_billed_nothing(
    gateway: tuple[InProcessGateway, BreakingEngine, openai.OpenAI], stream: bool
) -> None:
    app, engine, client = gateway
    engine.tokens = "" if stream else "oo"  # non-streamed: tokens were generated, none reached the client
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    response = app.http.post("/v1/chat/completions", json=body, headers=client.auth_headers)
    assert response.status_code == 502 and response.headers["retry-after"] == "1"  # a stream too: none began
    assert ledger_of(app, response.headers["x-request-id"]) == (0, 0, "failed")


def test_a_stream_the_client_leaves_is_billed_the_prompt_and_what_was_streamed(tmp_path: Path) -> None:
    """Through a real gateway process and a real socket: what went out before the client left, no more."""
    with fake_gateway(tmp_path, seconds_per_token=0.05) as gateway:
        tenant_id, key = tenant_key(gateway.base, "leaves")
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
        received = 0
        with (
            httpx.Client(base_url=gateway.base, headers={"authorization": f"Bearer {key}"}) as http,
            http.stream("POST", "/v1/chat/completions", json=body, headers={"x-client-request-id": "leaves"}) as r,
        ):
            for line in r.iter_lines():
                received += '"content":"' in line and '"content":""' not in line
                if received == 5:
                    break  # and the connection closes
        time.sleep(1)
    [(_, prompt, completion, outcome)] = ledger_rows(f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id)
    assert outcome == "aborted" and prompt > 0
    assert 5 <= completion <= 6  # the 5 read, and at most the one frame on its way when the client left
