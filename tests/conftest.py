"""Shared fixtures: the real default model (prepared once), one real gateway + vLLM engine process for the
whole suite, the operator's client and the official ``openai`` client pointed at it over HTTP, a database on
SQLite and PostgreSQL, a headless Chromium, and the app in process on the fake engine. What is not a fixture
is in ``tests/support``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, sync_playwright

from engine.model_prep import prepare_default_model
from engine.settings import EngineSettings
from gateway.db import Database
from tests.support import REPO
from tests.support.console import CHROMIUM, CHROMIUM_ARGS
from tests.support.databases import fresh_postgres_database
from tests.support.gateway_process import served_gateway
from tests.support.in_process import InProcessGateway, in_process_gateway
from tests.support.tenants import admin_client, create_tenant, openai_client


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """SmolLM2-135M-Instruct converted from the shipped GGUF, cached across runs under .data/."""
    data_dir = Path(os.environ.get("LLMAAS_TEST_MODEL_CACHE", REPO / ".data" / "test-cache"))
    return prepare_default_model(EngineSettings(data_dir=data_dir))


@pytest.fixture(scope="session")
def hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-data")


@pytest.fixture(scope="session")
def server(model_dir: Path, server_data_dir: Path) -> Iterator[str]:
    """``llmaas serve`` in its own process; yields the base URL (without /v1)."""
    gateway = served_gateway(
        server_data_dir,
        log=server_data_dir / "server.log",
        model_path=model_dir,
        kv_cache_space_gib=1,
        log_level="warning",
        # fp32 on every CPU: greedy answers of a 135M model in bf16 differ between AVX512-BF16 and AMX kernels
        # (on an AMX Xeon it no longer says "Paris"), and the tests assert answers.
        dtype="float32",
    )
    with gateway:
        yield gateway.base


@pytest.fixture(scope="session")
def admin(server: str) -> Iterator[httpx.Client]:
    """The operator's HTTP client (admin key)."""
    with admin_client(server) as session:
        yield session


@pytest.fixture(scope="session")
def api_key(admin: httpx.Client) -> str:
    """A key of a tenant without limits, for the API tests."""
    return create_tenant(admin, "api-tests")[1]


@pytest.fixture(scope="session")
def client(server: str, api_key: str) -> openai.OpenAI:
    return openai_client(server, api_key)


@pytest.fixture(scope="session")
def http(server: str, api_key: str) -> Iterator[httpx.Client]:
    """Plain HTTP with a tenant key."""
    with httpx.Client(base_url=server, timeout=120, headers={"authorization": f"Bearer {api_key}"}) as session:
        yield session


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium (never a browser a test tool downloads), driven by Playwright. One per module:
    Playwright's sync API keeps an event loop running in this thread while it is open, which no asyncio test
    (pytest-asyncio's runner) may start inside, so it is closed after the browser tests of each module."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'llmaas.db'}")
        db.migrate()
        yield db
        db.dispose()
        return
    with fresh_postgres_database() as url:
        db = Database(url)
        db.migrate()
        try:
            yield db
        finally:
            db.dispose()


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Callable[..., InProcessGateway]]:
    """Starts the app in process on a fake engine, its data in ``tmp_path``, stopped after the test:
    ``in_process(engine=None, model="fake", **settings)`` (see ``tests.support.in_process``)."""
    with ExitStack() as stack:

        def start(engine: Any = None, model: str = "fake", **settings: Any) -> InProcessGateway:
            return stack.enter_context(in_process_gateway(tmp_path, engine, model, **settings))

        yield start
