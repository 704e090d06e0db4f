"""Shared fixtures: the real default model (prepared once), one real gateway + vLLM engine process for the
whole suite, and the official ``openai`` client pointed at it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from engine.model_prep import prepare_default_model
from engine.settings import DEFAULT_MODEL_ID, EngineSettings
from gateway.db import Database

REPO = Path(__file__).resolve().parents[1]
MODEL = DEFAULT_MODEL_ID
ADMIN_KEY = "sk-admin-test-0123456789abcdef"
STARTUP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    port = free_port()
    data_dir = server_data_dir
    env = {
        **os.environ,
        "LLMAAS_DATA_DIR": str(data_dir),
        "LLMAAS_MODEL_PATH": str(model_dir),
        "LLMAAS_KV_CACHE_SPACE_GIB": "1",
        "LLMAAS_LOG_LEVEL": "warning",
        "LLMAAS_ADMIN_KEY": ADMIN_KEY,
        # fp32 on every CPU: greedy answers of a 135M model in bf16 differ between AVX512-BF16 and AMX kernels
        # (on an AMX Xeon it no longer says "Paris"), and the tests assert answers.
        "LLMAAS_DTYPE": "float32",
    }
    with running([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env, data_dir / "server.log"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def running(
    command: list[str], env: dict[str, str], log_path: Path, port: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, ready (``/ready`` answers 200) on entry and stopped gracefully on exit."""
    if port is None:
        port = int(command[command.index("--port") + 1])
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", proc, log_path)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-5000:]}")


@pytest.fixture(scope="session")
def admin(server: str) -> Iterator[httpx.Client]:
    """The operator's HTTP client (admin key)."""
    with httpx.Client(base_url=server, timeout=60, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as session:
        yield session


def create_tenant(admin: httpx.Client, name: str, **quotas: Any) -> tuple[dict[str, Any], str]:
    """A new tenant (name made unique) and a fresh API key for it."""
    unique = f"{name}-{os.urandom(3).hex()}"
    response = admin.post("/admin/v1/tenants", json={"name": unique, **quotas})
    assert response.status_code == 201, response.text
    tenant = response.json()
    key = admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "tests"})
    assert key.status_code == 201, key.text
    return tenant, key.json()["key"]


def console(base: str, key: str, **headers: str) -> httpx.Client:
    """A client signed in to the console as a browser would be (same-origin form)."""
    client = httpx.Client(base_url=base, headers={"origin": base, **headers})
    signed = client.post("/console/login", data={"key": key})
    assert signed.status_code == 303, signed.text
    return client


def csrf_of(client: httpx.Client, page: str) -> str:
    text = client.get(page).text
    return text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def openai_client(server: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0, timeout=120)


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


POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FAKE_GATEWAY = [sys.executable, str(REPO / "bench" / "fake_gateway.py")]


@contextmanager
def fresh_postgres_database(prefix: str = "llmaas_test") -> Iterator[str]:
    """A new, empty PostgreSQL database (its URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


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


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{val}"' in label_text for key, val in labels.items()):
            total += float(value)
    return total
