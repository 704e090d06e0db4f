"""The real app in this process (``TestClient``, its lifespan run) on a fake engine, for tests of gateway logic that
need no model and no server process; and an engine that breaks on demand."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine.fake import FakeEngine, fake_backend
from engine.protocol import CompletionDelta, EngineError
from engine.settings import EngineSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.state import AppState, state_of
from gateway.tenancy.models import KeyCreate, TenantCreate
from tests.support import ADMIN_KEY


class BreakingEngine(FakeEngine):
    """Streams ``tokens``, one character a token, then breaks ("engine core died")."""

    def __init__(self, tokens: str) -> None:
        super().__init__()
        self.tokens = tokens

    async def generate(self, *request: Any, **options: Any) -> AsyncIterator[list[CompletionDelta]]:
        """Whatever the request (prompt, sampling options, id, adapter)."""
        for token in self.tokens:
            yield [CompletionDelta(0, token, [ord(token)])]
        raise EngineError("engine core died")


@dataclass
class InProcessGateway:
    app: FastAPI
    http: TestClient

    @property
    def state(self) -> AppState:
        return state_of(self.app)

    def tenant(self, name: str = "t", **quotas: Any) -> tuple[str, str, openai.OpenAI]:
        """A new tenant (``name`` made unique; made through the service, not the API): its id, its name, and a
        client with a key of it."""
        created = self.state.tenancy.create_tenant(TenantCreate(name=f"{name}-{os.urandom(3).hex()}", **quotas))
        key = self.state.tenancy.create_key(created.id, KeyCreate()).key
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0)
        return created.id, created.name, client


@contextmanager
def in_process_gateway(
    data_dir: Path, engine: FakeEngine | None = None, model: str = "fake", **settings: Any
) -> Iterator[InProcessGateway]:
    """The app on ``engine`` (by default the instant fake one) serving ``model``, its data in ``data_dir`` and the
    other ``settings`` given, started until the block ends."""
    served = engine or FakeEngine()
    settings = {"admin_key": ADMIN_KEY, **settings}
    app = create_app(
        GatewaySettings(data_dir=data_dir, **settings),
        EngineSettings(served_model_name=model),
        backend_factory=fake_backend(served),
    )
    with TestClient(app) as http:
        yield InProcessGateway(app, http)
