"""What the serving benchmarks share: free ports, starting and stopping a server process, the prompt set,
and a load of concurrent streaming chat requests measured for latency, TTFT and completion tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
REQUEST_TIMEOUT_S = 900.0
STOP_TIMEOUT_S = 60.0
RESERVED_PORTS = {8011}  # another server may be running there; never use it


def create_tenant_key(base_url: str, admin_key: str, name: str, **quotas: Any) -> str:
    """A new tenant on our gateway and a key for it."""
    admin = {"authorization": f"Bearer {admin_key}"}
    tenant = httpx.post(f"{base_url}/admin/v1/tenants", json={"name": name, **quotas}, headers=admin, timeout=30)
    tenant.raise_for_status()
    key = httpx.post(f"{base_url}/admin/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=admin, timeout=30)
    key.raise_for_status()
    return str(key.json()["key"])


PROMPTS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make food?",
    "What is a prime number?",
    "Who wrote Romeo and Juliet?",
    "How far away is the Moon?",
    "What does a CPU do?",
    "Why do cats purr?",
    "What is the boiling point of water?",
    "How does a rainbow form?",
    "What is machine learning?",
    "Name three primary colors.",
    "What causes the seasons on Earth?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Why is the ocean salty?",
    "What is the speed of light?",
    "How do airplanes stay in the air?",
    "What is an atom made of?",
    "Why do leaves change color in autumn?",
    "What is the largest planet in the solar system?",
    "How does a vaccine work?",
    "What is gravity?",
    "Who painted the Mona Lisa?",
    "What is the difference between weather and climate?",
    "How do bees make honey?",
    "What is a black hole?",
    "Why do we need sleep?",
    "What is the Pythagorean theorem?",
    "How does the internet work?",
    "What is DNA?",
    "Why does ice float on water?",
]


@dataclass
class RequestResult:
    ok: bool
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    usage_reported: bool
    error: str | None = None


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def wait_until_ready(proc: subprocess.Popen[bytes], base_url: str, path: str, timeout_s: float, model: str) -> None:
    """Until ``path`` answers 200 and the server lists ``model``."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
            try:
                ready = client.get(base_url + path)
                if ready.status_code == 200:
                    if path == "/ready":  # our gateway: /v1/models needs a tenant key, /ready names the models
                        ids = ready.json()["models"]
                    else:
                        ids = [m["id"] for m in client.get(base_url + "/v1/models").json().get("data", [])]
                    if model not in ids:
                        raise RuntimeError(f"/v1/models lists {ids}, not {model!r}")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
    raise TimeoutError(f"server not ready at {base_url}{path} after {timeout_s:.0f} s")


def wait_until_quiet(max_wait_s: float = 60.0, busy_percent: float = 15.0) -> float:
    """Until the machine's CPUs are idle for a second (a server's start-up work, such as the embedded fine-tuning
    worker importing its libraries, must not land in the first measurements); the seconds waited."""
    import psutil

    started = time.monotonic()
    while time.monotonic() - started < max_wait_s and psutil.cpu_percent(interval=1.0) > busy_percent:
        pass
    return time.monotonic() - started


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, wait for it, then make sure nothing of its process group is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # vLLM's engine core is a child process: it must be gone before the next server starts.
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Gateway:
    base_url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_gateway(
    settings: Mapping[str, str],
    log_path: Path,
    model: str,
    ready_timeout_s: float = 600.0,
    checkout: Path = REPO,
    script: Sequence[str] = ("-m", "gateway.cli", "serve"),
) -> Iterator[Gateway]:
    """Our gateway (``llmaas serve``) on a free port, with ``settings`` as its only ``LLMAAS_`` environment (no
    stray setting of the caller's changes its defaults), once ready; stopped with its engine on exit. Run from
    ``checkout`` (another worktree of this repository, for a before/after comparison) with this interpreter;
    ``script``: what it runs in place of ``llmaas serve`` (``bench/fake_gateway.py``: the fake engine)."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_")}
    env.update(settings)
    env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, *script, "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_ready(proc, base_url, "/ready", ready_timeout_s, model)
            yield Gateway(base_url, proc)
        finally:
            stop_server(proc)


def gateway_settings(model_path: Path, data_dir: str, admin_key: str) -> dict[str, str]:
    """What a benchmark's gateway runs with at least: the model, its own data dir, the admin key, no fine-tuning
    worker beside it, quiet logs."""
    return {
        "LLMAAS_MODEL_PATH": str(model_path),
        "LLMAAS_DATA_DIR": data_dir,
        "LLMAAS_ADMIN_KEY": admin_key,
        "LLMAAS_EMBEDDED_WORKER": "false",
        "LLMAAS_LOG_LEVEL": "warning",
    }


POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1:5432 (its URL), dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{os.urandom(4).hex()}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_database(kind: str, workdir: str, prefix: str) -> Iterator[Any]:
    """A fresh, migrated ``gateway.db.Database``: SQLite in ``workdir``, or a new PostgreSQL database named from
    ``prefix``; disposed (and the PostgreSQL one dropped) afterwards."""
    from gateway.db import Database

    with contextlib.ExitStack() as stack:
        if kind == "postgresql":
            url = stack.enter_context(fresh_postgres_database(prefix))
        else:
            url = f"sqlite:///{workdir}/{prefix}.db"
        database = Database(url)
        stack.callback(database.dispose)  # before the database is dropped (callbacks run in reverse)
        database.migrate()
        yield database


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def chat_body(prompt: str, max_tokens: int, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    """One streaming chat request: its latency, TTFT and completion tokens (usage chunk, else chunks)."""
    start = time.perf_counter()
    ttft: float | None = None
    content_chunks = 0
    usage_tokens: int | None = None
    error: str | None = None
    done = False
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                error = f"HTTP {response.status_code}: {text[:300]}"
                return RequestResult(False, time.perf_counter() - start, None, 0, False, error)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                payload = json.loads(data)
                if "error" in payload:
                    error = f"error frame: {json.dumps(payload['error'])[:300]}"
                    continue
                for choice in payload.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        content_chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - start
                if payload.get("usage"):
                    usage_tokens = int(payload["usage"]["completion_tokens"])
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = time.perf_counter() - start
    if error is None and not done:
        error = "stream ended without data: [DONE]"
    tokens = usage_tokens if usage_tokens is not None else content_chunks
    return RequestResult(error is None, latency, ttft, tokens, usage_tokens is not None, error)


async def run_load(base_url: str, api_key: str, bodies: list[dict[str, Any]]) -> tuple[list[RequestResult], float]:
    """The requests, all sent at once; their results and the wall time."""
    url = base_url + "/v1/chat/completions"
    clients = len(bodies)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(client, url, body) for body in bodies))
        wall = time.perf_counter() - start
    return list(results), wall
