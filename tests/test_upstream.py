"""The upstream backend against instant stand-ins for vLLM servers (``bench/fake_upstream.py``), through a real
gateway process and the official client: routing over replicas, adapters loaded where they are used (and
unloaded least recently used, and everywhere on delete, of a model or of its tenant), failover and ejection
when a replica dies and its return, discovery from a file that changes, and 503 when no replica is there.
``test_upstream_vllm.py`` runs the same backend against real vLLM servers."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import ADMIN, MODEL
from tests.support.fake_upstream import fake_upstream, stats
from tests.support.gateway_process import free_port, served_gateway
from tests.support.metrics import metric_value
from tests.support.tenants import openai_client, register_adapter, tenant_key


def _wait(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def urls(ports: list[int]) -> str:
    return ",".join(f"http://127.0.0.1:{port}" for port in ports)


@contextmanager
def upstream_gateway(tmp_path: Path, model_dir: Path, **settings: str) -> Iterator[str]:
    """``llmaas serve`` with the upstream backend and ``settings`` (the replicas, others); its base URL."""
    with served_gateway(
        tmp_path,
        engine="upstream",
        embedded_worker="false",
        model_path=model_dir,
        upstream_scrape_interval_seconds=0.5,
        upstream_eject_seconds=2,
        **settings,
    ) as gateway:
        yield gateway.base


def chat(client: openai.OpenAI, model: str = MODEL) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    return reply.choices[0].message.content or ""


@pytest.fixture
def pool(tmp_path: Path, model_dir: Path) -> Iterator[tuple[str, list[int], Path]]:
    """Two fake replicas (max 2 adapters each in the gateway's view... the fake's max_lora is 2) and a gateway."""
    ports = [free_port(), free_port()]
    with (
        fake_upstream(ports[0], model_dir, tmp_path / "a.log"),
        fake_upstream(ports[1], model_dir, tmp_path / "b.log"),
        upstream_gateway(tmp_path, model_dir, upstream_urls=urls(ports), upstream_max_adapters_per_replica="1") as base,
    ):
        yield base, ports, tmp_path


def test_requests_spread_over_replicas_and_usage_is_the_replicas_count(pool: tuple[str, list[int], Path]) -> None:
    base, ports, _ = pool
    _, key = tenant_key(base)
    client = openai_client(base, key)
    for _ in range(6):
        assert chat(client) == "xxx"
    stream = client.completions.create(
        model=MODEL, prompt="hello", max_tokens=4, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "x" * 8
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    served = [sum(stats(port)["served"].values()) for port in ports]
    assert sum(served) == 7 and min(served) >= 2, served
    ready = httpx.get(f"{base}/ready").json()
    assert ready["engines"][MODEL]["replicas"] == "2/2 available"


def test_adapters_load_where_used_least_recently_used_go_and_delete_unloads(
    pool: tuple[str, list[int], Path],
) -> None:
    base, ports, data_dir = pool
    tenant_id, key = tenant_key(base)
    names = [register_adapter(data_dir, tenant_id) for _ in range(3)]
    client = openai_client(base, key)
    assert {m.id for m in client.models.list()} == {MODEL, *names}
    for name in names:
        assert chat(client, name) == "xxx"
    assert chat(client, names[0]) == "xxx"  # sticks to where it is (or is loaded again)
    loaded = [stats(port)["adapters"] for port in ports]
    assert all(len(adapters) <= 1 for adapters in loaded), loaded  # LLMAAS_UPSTREAM_MAX_ADAPTERS_PER_REPLICA=1
    assert sum(stats(port)["loads"] for port in ports) >= 3
    target = next(name for name in names if any(name in adapters for adapters in loaded))
    deleted = httpx.delete(f"{base}/v1/models/{target}", headers={"authorization": f"Bearer {key}"})
    assert deleted.status_code == 200, deleted.text
    assert all(target not in stats(port)["adapters"] for port in ports)
    with pytest.raises(openai.NotFoundError):
        chat(client, target)


def test_deleting_a_tenant_unloads_its_adapters_from_every_replica(pool: tuple[str, list[int], Path]) -> None:
    base, ports, data_dir = pool
    tenant_id, key = tenant_key(base)
    names = [register_adapter(data_dir, tenant_id) for _ in range(2)]
    client = openai_client(base, key)
    for name in names:
        assert chat(client, name) == "xxx"
    assert any(set(names) & set(stats(port)["adapters"]) for port in ports)
    deleted = httpx.delete(f"{base}/admin/v1/tenants/{tenant_id}", headers=ADMIN)
    assert deleted.status_code == 200, deleted.text
    assert not any(set(names) & set(stats(port)["adapters"]) for port in ports)
    assert list((data_dir / "adapters").iterdir()) == []  # the weights too


def test_a_dead_replica_is_ejected_its_requests_go_elsewhere_and_it_comes_back(tmp_path: Path, model_dir: Path) -> None:
    ports = [free_port(), free_port()]
    with (
        fake_upstream(ports[0], model_dir, tmp_path / "a.log"),
        upstream_gateway(tmp_path, model_dir, upstream_urls=urls(ports)) as base,
    ):
        tenant_id, key = tenant_key(base)
        adapter = register_adapter(tmp_path, tenant_id)
        client = openai_client(base, key)
        with fake_upstream(ports[1], model_dir, tmp_path / "b.log") as doomed:
            _wait(lambda: httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "2/2 available")
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            for _ in range(8):  # every one succeeds: a refused connection is retried on the other replica
                assert chat(client) == "xxx"
                assert chat(client, adapter) == "xxx"
        metrics = httpx.get(f"{base}/metrics", headers=ADMIN).text
        assert metric_value(metrics, "llmaas_upstream_available", replica=f"http://127.0.0.1:{ports[1]}") == 0
        assert httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "1/2 available"
        with fake_upstream(ports[1], model_dir, tmp_path / "b2.log"):  # back, empty: adapters are loaded anew
            _wait(lambda: httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "2/2 available")
            for _ in range(8):
                chat(client)
            assert sum(stats(ports[1])["served"].values()) > 0


def test_discovery_follows_the_file_and_no_replica_means_503(tmp_path: Path, model_dir: Path) -> None:
    ports = [free_port(), free_port()]
    listing = tmp_path / "upstreams.json"

    def publish(*chosen: int) -> None:
        draft = tmp_path / "upstreams.json.new"
        draft.write_text(json.dumps({"upstreams": [{"url": f"http://127.0.0.1:{p}"} for p in chosen]}))
        draft.replace(listing)  # written, then renamed: the gateway never reads half a file

    publish(ports[0])
    with (
        fake_upstream(ports[0], model_dir, tmp_path / "a.log"),
        fake_upstream(ports[1], model_dir, tmp_path / "b.log"),
        upstream_gateway(tmp_path, model_dir, upstream_file=str(listing)) as base,
    ):
        _, key = tenant_key(base)
        client = openai_client(base, key)
        assert httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "1/1 available"
        publish(ports[0], ports[1])
        _wait(lambda: httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "2/2 available")
        listing.write_text("{not json")  # a broken file keeps the last good list
        time.sleep(1.5)
        assert httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "2/2 available"
        publish(ports[1])
        _wait(lambda: httpx.get(f"{base}/ready").json()["engines"][MODEL]["replicas"] == "1/1 available")
        before = sum(stats(ports[0])["served"].values())
        for _ in range(3):
            chat(client)
        assert sum(stats(ports[0])["served"].values()) == before
        publish()
        _wait(lambda: httpx.get(f"{base}/ready").status_code == 503)
        with pytest.raises(openai.InternalServerError) as refused:
            chat(client)
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "engine_unavailable"  # type: ignore[index]


def test_models_across_the_pool_are_their_union_and_go_only_where_served(tmp_path: Path, model_dir: Path) -> None:
    ports = [free_port(), free_port()]
    with (
        fake_upstream(ports[0], model_dir, tmp_path / "a.log"),
        fake_upstream(ports[1], model_dir, tmp_path / "b.log", model="other-model"),
        upstream_gateway(tmp_path, model_dir, upstream_urls=urls(ports)) as base,
    ):
        _wait(lambda: len(httpx.get(f"{base}/ready").json()["models"]) == 2)
        _, key = tenant_key(base)
        client = openai_client(base, key)
        assert {m.id for m in client.models.list()} == {MODEL, "other-model"}
        for _ in range(4):
            chat(client, "other-model")
            chat(client)
        assert stats(ports[0])["served"] == {MODEL: 4}
        assert stats(ports[1])["served"] == {"other-model": 4}


def test_a_request_past_its_deadline_is_stopped(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    with (
        fake_upstream(port, model_dir, tmp_path / "a.log", seconds_per_token="0.05"),
        upstream_gateway(
            tmp_path, model_dir, upstream_urls=urls([port]), upstream_request_deadline_seconds="1"
        ) as base,
    ):
        _, key = tenant_key(base)
        client = openai_client(base, key)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as stopped:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=200)
        assert time.monotonic() - started < 5  # 200 tokens would take 10 s
        assert "deadline" in str(stopped.value)
        assert chat(client) == "xxx"  # short requests still fit
