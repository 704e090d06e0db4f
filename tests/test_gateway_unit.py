"""Gateway logic that the real engine cannot be made to show on demand: failures in the middle of a
stream, and stream merging. Runs the real app in process with a fake engine."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import pytest

from engine.settings import EngineSettings
from gateway.errors import AuthenticationError
from gateway.inference.generation import merge_streams
from gateway.settings import GatewaySettings
from tests.support.gateway_process import gateway_env, llmaas
from tests.support.in_process import BreakingEngine, InProcessGateway


@pytest.fixture
def failing_client(in_process: Callable[..., InProcessGateway]) -> openai.OpenAI:
    """A tenant's client of the app whose engine streams two tokens, then breaks."""
    return in_process(BreakingEngine("ok")).tenant()[2]


def test_mid_stream_failure_is_sent_as_an_error_event(failing_client: openai.OpenAI) -> None:
    stream = failing_client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="engine core died"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "o", "k"]


def test_failure_before_a_non_stream_reply_is_a_502_in_openai_shape(failing_client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        failing_client.completions.create(model="fake", prompt="hi", max_tokens=4)
    assert info.value.status_code == 502 and info.value.response.headers["retry-after"] == "1"
    assert info.value.body["type"] == "server_error"


def test_merge_streams_interleaves_and_closes_all() -> None:
    closed: list[int] = []

    async def numbers(tag: int, delay: float) -> AsyncIterator[int]:
        try:
            for i in range(3):
                await asyncio.sleep(delay)
                yield tag * 10 + i
        finally:
            closed.append(tag)

    async def run() -> list[tuple[int, int]]:
        return [item async for item in merge_streams([numbers(1, 0.001), numbers(2, 0.0015)])]

    items = asyncio.run(run())
    assert sorted(items) == [(0, 10), (0, 11), (0, 12), (1, 20), (1, 21), (1, 22)]
    assert sorted(closed) == [1, 2]

    async def first_only() -> None:
        merged = merge_streams([numbers(3, 0.001), numbers(4, 1.0)])
        async for _ in merged:
            break
        await merged.aclose()

    closed.clear()
    asyncio.run(first_only())
    assert sorted(closed) == [3, 4]


def test_admin_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    from gateway.tenancy.admin_key import admin_key_path, load_or_create_admin_key

    settings = GatewaySettings(data_dir=tmp_path)
    key, generated = load_or_create_admin_key(settings)
    assert generated and key.startswith("sk-admin-")
    assert admin_key_path(tmp_path).stat().st_mode & 0o777 == 0o600
    assert load_or_create_admin_key(settings) == (key, False)
    explicit = GatewaySettings(data_dir=tmp_path, admin_key="sk-admin-from-the-environment")
    assert load_or_create_admin_key(explicit) == ("sk-admin-from-the-environment", False)


def test_a_burst_with_one_uncached_key_makes_one_database_lookup() -> None:
    from gateway.tenancy.key_cache import KeyCache

    calls = 0

    def lookup(hashed: str) -> None:
        nonlocal calls
        calls += 1

    async def burst() -> list[object]:
        cache = KeyCache(lookup, ttl_seconds=5)
        return await asyncio.gather(*(cache.identify("sk-unknown") for _ in range(50)))

    assert asyncio.run(burst()) == [None] * 50
    assert calls == 1


def test_keys_that_cannot_be_ours_cost_no_database_lookup_and_unknown_ones_one() -> None:
    from gateway.tenancy.key_cache import KeyCache
    from gateway.tenancy.keys import new_key
    from gateway.tenancy.principal import Authenticator, Realm

    lookups: list[str] = []
    cache = KeyCache(lambda hashed: lookups.append(hashed), ttl_seconds=5)  # type: ignore[arg-type, func-returns-value]
    authenticator = Authenticator(cache, "sk-admin-unit-0123456789", None)
    unknown = new_key()

    async def attempts() -> None:
        for token in ["sk-short", "not-a-key", "x" * 200, unknown, unknown, unknown]:
            with pytest.raises(AuthenticationError):
                await authenticator.authenticate(f"Bearer {token}", Realm.TENANT)

    asyncio.run(attempts())
    assert len(lookups) == 1


def test_a_lookup_in_flight_cannot_bring_back_a_revoked_key() -> None:
    from gateway.tenancy.key_cache import KeyCache
    from gateway.tenancy.models import Quotas
    from gateway.tenancy.service import KeyIdentity

    revoked = False
    reading = threading.Event()
    release = threading.Event()

    def lookup(hashed: str) -> KeyIdentity:
        state = revoked  # what the database said when the read started
        reading.set()
        release.wait(5)
        return KeyIdentity("key_1", "ten_1", "acme", "active", None, None, state, Quotas())

    async def race() -> tuple[bool, bool]:
        nonlocal revoked
        cache = KeyCache(lookup, ttl_seconds=5)
        in_flight = asyncio.ensure_future(cache.identify("sk-x"))
        await asyncio.get_running_loop().run_in_executor(None, reading.wait)
        revoked = True  # the admin route commits the revocation, then tells the cache
        cache.invalidate_tenant("ten_1")
        release.set()
        stale = await in_flight  # started before the revocation: it may still say active
        fresh = await cache.identify("sk-x")  # but it was not cached: this one reads again
        return stale.revoked, fresh.revoked  # type: ignore[union-attr]

    assert asyncio.run(race()) == (False, True)


def test_the_embedded_worker_is_started_again_when_it_dies() -> None:
    import sys
    import time

    from gateway.cli.worker import WorkerSupervisor

    dying = WorkerSupervisor([sys.executable, "-c", "raise SystemExit(3)"], max_backoff_seconds=0.05)
    dying.start()
    deadline = time.monotonic() + 20
    while dying.starts < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    dying.stop()
    assert dying.starts >= 3
    stopped_at = dying.starts
    time.sleep(0.3)
    assert dying.starts == stopped_at  # stopping ends the restarts

    running = WorkerSupervisor([sys.executable, "-c", "import time; time.sleep(60)"])
    running.start()
    time.sleep(0.5)
    started = time.monotonic()
    running.stop()  # terminates the worker it runs
    assert running.starts == 1 and time.monotonic() - started < 10


def test_the_default_model_is_converted_once_whoever_asks_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine import model_prep

    conversions = 0

    def slow_convert(gguf_file: Path, target: Path) -> None:
        nonlocal conversions
        conversions += 1
        time.sleep(0.5)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(model_prep, "convert_gguf", slow_convert)
    monkeypatch.setattr(model_prep, "find_default_gguf", lambda: tmp_path / "model.gguf")
    settings = EngineSettings(data_dir=tmp_path)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(model_prep.prepare_default_model(settings)))]
    threads.append(threading.Thread(target=lambda: results.append(model_prep.prepare_default_model(settings))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert conversions == 1
    assert len(set(results)) == 1 and (results[0] / "config.json").exists()


def test_serve_claims_its_port_before_the_engine_starts(tmp_path: Path) -> None:
    """A port in use fails `llmaas serve` at once with a message (the engine never starts): the port is bound
    before the engine, so that none of the engine's own processes can take it meanwhile."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = llmaas(gateway_env(tmp_path, admin_key=None, embedded_worker="false"), "serve", "--port", str(port))
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "EngineCore" not in proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
