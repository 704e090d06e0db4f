"""Fair queuing between tenants (gateway/scheduling/): the scheduler directly (deterministic: the order in which
waiting requests get the engine), then through the real app on the fake engine over HTTP with the openai client
(refusals with their status, shape and ``retry-after``; the admin API's weight and class; the metrics)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import func, select

from engine.fake import FakeEngine
from gateway.db import UsageRecord
from gateway.errors import APIError, PermissionDenied
from gateway.ops.snapshot import service_snapshot
from gateway.scheduling import PriorityClass
from gateway.scheduling.memory import MemoryScheduler
from gateway.scheduling.redis import RedisScheduler
from gateway.scheduling.slots import (
    QueueLimits,
    QueueTimeout,
    QueueUnavailable,
    Scheduler,
    ServerQueueFull,
    SlotDemand,
    TenantQueueFull,
    Ticket,
)
from gateway.tenancy.models import KeyCreate
from tests.support import ADMIN_KEY, MODEL
from tests.support.databases import fresh_postgres_database
from tests.support.fake_upstream import fake_upstream
from tests.support.gateway_process import free_port, served_gateway
from tests.support.in_process import InProcessGateway
from tests.support.tenants import openai_client, tenant_key

REDIS_URL = "redis://127.0.0.1:6379/0"


def limits(**changes: Any) -> QueueLimits:
    values: dict[str, Any] = {
        "fair": True,
        "max_waiting_per_tenant": 100,
        "max_waiting": 1000,
        "wait_seconds": 30.0,
        "burst_slots": 0,
    }
    return QueueLimits(**{**values, **changes})


class Recorder:
    """Schedulers of ``capacity`` slots (one, or several sharing Redis) whose admissions are recorded in order."""

    def __init__(self, capacity: int = 1, redis_gateways: int = 0, **changes: Any) -> None:
        self.model = f"m-{uuid.uuid4().hex[:8]}"
        self.schedulers: list[Scheduler] = (
            [
                RedisScheduler(REDIS_URL, limits(**changes), lambda model: capacity, self._waited, lease_seconds=60)
                for _ in range(redis_gateways)
            ]
            if redis_gateways
            else [MemoryScheduler(limits(**changes), lambda model: capacity, self._waited)]
        )
        self.scheduler = self.schedulers[0]
        self.admitted: list[str] = []
        self.waits: list[tuple[PriorityClass, float]] = []
        self.tickets: dict[str, Ticket] = {}
        self._count = 0

    def _waited(self, priority_class: PriorityClass, seconds: float) -> None:
        self.waits.append((priority_class, seconds))

    def demand(self, tenant: str, cls: PriorityClass = "interactive", weight: int = 1, seqs: int = 1) -> SlotDemand:
        self._count += 1
        return SlotDemand(f"{tenant}{self._count}", tenant, cls, weight, seqs)

    async def run(self, demand: SlotDemand, via: int = 0) -> None:
        ticket = await self.schedulers[via].acquire(self.model, demand)
        self.admitted.append(demand.request_id)
        self.tickets[demand.request_id] = ticket

    def start(self, demand: SlotDemand, via: int = 0) -> asyncio.Task[None]:
        return asyncio.create_task(self.run(demand, via))

    async def acquire(self, demand: SlotDemand) -> Ticket:
        return await self.scheduler.acquire(self.model, demand)

    async def drain(self) -> list[str]:
        """Release what runs, one at a time, until nothing is left; the order they were admitted in."""
        await asyncio.sleep(0.05)
        while self.tickets:
            first = next(iter(self.tickets))
            self.tickets.pop(first).release()
            before = len(self.admitted)
            deadline = time.monotonic() + 2
            while len(self.admitted) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        return [request_id.rstrip("0123456789") for request_id in self.admitted]

    async def close(self) -> None:
        for scheduler in self.schedulers:
            await scheduler.close()


Make = Callable[..., Recorder]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Recorders on the in-process scheduler, or on the Redis one (each its own pool in the shared Redis)."""
    made: list[Recorder] = []

    def recorder(**changes: Any) -> Recorder:
        made.append(Recorder(redis_gateways=1 if request.param == "redis" else 0, **changes))
        return made[-1]

    yield recorder
    for each in made:
        await each.close()


async def _queued(recorder: Recorder, demands: list[SlotDemand], via: int = 0) -> list[asyncio.Task[None]]:
    """Start each demand in order, each one in the queue before the next (each one waits: the slot is held)."""
    tasks = []
    for demand in demands:
        before = sum(recorder.schedulers[via].waiting().values())
        tasks.append(recorder.start(demand, via))
        deadline = time.monotonic() + 2
        while sum(recorder.schedulers[via].waiting().values()) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
    return tasks


async def test_a_tenant_that_sent_many_waits_behind_one_that_sent_one(make: Make) -> None:
    fair = make()
    await fair.run(fair.demand("hold"))
    await _queued(fair, [fair.demand("A") for _ in range(5)] + [fair.demand("B")])
    assert await fair.drain() == ["hold", "A", "B", "A", "A", "A", "A"]

    fcfs = make(fair=False)
    await fcfs.run(fcfs.demand("hold"))
    await _queued(fcfs, [fcfs.demand("A") for _ in range(5)] + [fcfs.demand("B")])
    assert await fcfs.drain() == ["hold", "A", "A", "A", "A", "A", "B"]


async def test_interactive_goes_before_batch_whatever_the_arrival(make: Make) -> None:
    recorder = make()
    await recorder.run(recorder.demand("hold"))
    await _queued(recorder, [recorder.demand("B", "batch") for _ in range(3)] + [recorder.demand("I")])
    assert await recorder.drain() == ["hold", "I", "B", "B", "B"]
    assert [cls for cls, _ in recorder.waits].count("batch") == 3


async def test_weights_share_the_engine_in_proportion(make: Make) -> None:
    recorder = make()
    await recorder.run(recorder.demand("hold"))
    await _queued(recorder, [recorder.demand("A", weight=1) for _ in range(6)])
    await _queued(recorder, [recorder.demand("W", weight=2) for _ in range(6)])
    order = (await recorder.drain())[1:]
    # In the first nine admissions the weight-2 tenant gets two for each of the other's.
    assert order[:9].count("W") == 6 and order[:9].count("A") == 3


async def test_no_tenant_holds_every_slot_while_another_waits(make: Make) -> None:
    """A holds every slot and waits for more; B, with nothing running, gets a burst slot at once; B's second request
    (B runs one now) waits like A's, and a slot A gives back is not taken: the burst slot is in use."""
    recorder = make(capacity=3, burst_slots=1)
    for _ in range(3):
        await recorder.run(recorder.demand("A"))
    (waiting_a,) = await _queued(recorder, [recorder.demand("A")])
    await asyncio.wait_for(recorder.run(recorder.demand("B")), 2)
    (waiting_b,) = await _queued(recorder, [recorder.demand("B")])
    recorder.tickets.pop(recorder.admitted[0]).release()
    await asyncio.sleep(0.1)
    assert not waiting_a.done() and not waiting_b.done()
    recorder.tickets.pop(recorder.admitted[1]).release()
    await asyncio.wait_for(asyncio.wait([waiting_a, waiting_b], return_when=asyncio.FIRST_COMPLETED), 2)
    for task in (waiting_a, waiting_b):
        task.cancel()
    await asyncio.gather(waiting_a, waiting_b, return_exceptions=True)


async def test_a_request_counts_its_sequences(make: Make) -> None:
    recorder = make(capacity=4)
    await recorder.run(recorder.demand("A", seqs=3))
    (second,) = await _queued(recorder, [recorder.demand("B", seqs=2)])
    assert not second.done()  # 3 + 2 > 4
    (third,) = await _queued(recorder, [recorder.demand("C", seqs=1)])  # would fit, but B would starve
    assert not third.done()
    recorder.tickets.pop(recorder.admitted[0]).release()
    await asyncio.wait_for(asyncio.gather(second, third), 1)
    assert [request_id[0] for request_id in recorder.admitted] == ["A", "B", "C"]


async def test_depth_per_tenant_and_in_all_is_bounded(make: Make) -> None:
    recorder = make(max_waiting_per_tenant=2, max_waiting=3)
    await recorder.run(recorder.demand("hold"))
    await _queued(recorder, [recorder.demand("A"), recorder.demand("A")])
    with pytest.raises(TenantQueueFull) as tenant_full:
        await recorder.acquire(recorder.demand("A"))
    assert tenant_full.value.status_code == 429 and tenant_full.value.headers["retry-after"] == "1"
    await _queued(recorder, [recorder.demand("B")])
    with pytest.raises(ServerQueueFull) as server_full:
        await recorder.acquire(recorder.demand("C"))
    assert server_full.value.status_code == 503 and "retry-after" in server_full.value.headers
    assert recorder.scheduler.waiting() == {"interactive": 3, "batch": 0}


async def test_waiting_past_the_deadline_is_a_503(make: Make) -> None:
    recorder = make(wait_seconds=0.05)
    await recorder.run(recorder.demand("hold"))
    with pytest.raises(QueueTimeout) as timeout:
        await recorder.acquire(recorder.demand("A"))
    error: APIError = timeout.value
    assert error.status_code == 503 and error.code == "queue_timeout" and "retry-after" in error.headers
    assert recorder.scheduler.waiting()["interactive"] == 0


async def test_a_client_that_leaves_frees_its_place_at_once(make: Make) -> None:
    recorder = make(capacity=2)
    await recorder.run(recorder.demand("hold"))
    # The first needs both slots: it waits, and holds up those behind it.
    big, behind = await _queued(recorder, [recorder.demand("A", seqs=2), recorder.demand("B")])
    assert recorder.scheduler.waiting()["interactive"] == 2 and not behind.done()
    big.cancel()
    await asyncio.wait_for(behind, 1)  # admitted as soon as the one ahead left
    assert recorder.scheduler.waiting()["interactive"] == 0


async def test_fair_across_gateways_sharing_redis() -> None:
    """Two gateways' schedulers on one Redis: A's requests queued on one, B's one request on the other, B goes
    second; and what A runs counts on both (the burst slot is one for the pool, not one per gateway)."""
    recorder = Recorder(redis_gateways=2)
    try:
        await recorder.run(recorder.demand("hold"), via=0)
        await _queued(recorder, [recorder.demand("A") for _ in range(4)])
        (waiting_b,) = await _queued(recorder, [recorder.demand("B")], via=1)
        assert not waiting_b.done()
        assert await recorder.drain() == ["hold", "A", "B", "A", "A", "A"]
    finally:
        await recorder.close()
    burst = Recorder(capacity=2, redis_gateways=2, burst_slots=1)
    try:
        await burst.run(burst.demand("A"), via=0)
        await burst.run(burst.demand("A"), via=1)
        (third,) = await _queued(burst, [burst.demand("A")])
        # A holds both slots, on two gateways: B, on either, gets the burst slot; C finds none left.
        await asyncio.wait_for(burst.run(burst.demand("B"), via=1), 2)
        (waiting_c,) = await _queued(burst, [burst.demand("C")], via=1)
        assert not third.done() and not waiting_c.done()
        for task in (third, waiting_c):
            task.cancel()
        await asyncio.gather(third, waiting_c, return_exceptions=True)
    finally:
        await burst.close()


# -- through the app (fake engine, HTTP, the openai client) ------------------------------------------------------
def _admin(gateway: InProcessGateway) -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def _hold_the_engine(client: openai.OpenAI, started: threading.Event) -> threading.Thread:
    """A stream that holds the engine's one slot for a while (the fake engine: 0.05 s a token)."""

    def run() -> None:
        stream = client.completions.create(model="fake", prompt="hold", max_tokens=40, stream=True)
        for _ in stream:
            started.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(30)
    return thread


def test_a_busy_engine_refuses_with_429_and_503_and_charges_nothing(
    in_process: Callable[..., InProcessGateway],
) -> None:
    gateway = in_process(
        engine=FakeEngine(seconds_per_token=0.05),
        scheduler_capacity=1,
        queue_wait_seconds=0.3,
        queue_max_waiting_per_tenant=1,
    )
    _, _, holder = gateway.tenant("a")
    _, _, bursting = gateway.tenant("b")
    c_id, _, waiter = gateway.tenant("c", max_concurrent_requests=1)
    # A holds the engine's one slot; B, with nothing running, the one burst slot: C has to wait.
    threads = [_hold_the_engine(client, threading.Event()) for client in (holder, bursting)]
    with pytest.raises(openai.InternalServerError) as timed_out:
        waiter.completions.create(model="fake", prompt="hi", max_tokens=2)
    response = timed_out.value.response
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "queue_timeout"
    assert response.json()["error"]["type"] == "server_error"

    outcomes: list[int] = []

    def wait_in_line() -> None:
        try:
            holder.completions.create(model="fake", prompt="x", max_tokens=1)
        except openai.APIStatusError as exc:
            outcomes.append(exc.status_code)

    second = threading.Thread(target=wait_in_line)
    second.start()  # waits in the tenant's one place in the queue (and times out: the stream holds the engine)
    time.sleep(0.1)
    with pytest.raises(openai.RateLimitError) as full:
        holder.completions.create(model="fake", prompt="x", max_tokens=1)
    assert full.value.response.headers["retry-after"] == "1"
    assert full.value.response.json()["error"]["code"] == "queue_full"
    for thread in [*threads, second]:
        thread.join()
    assert outcomes == [503]

    # The refused request gave back its concurrency slot and left no usage record.
    assert waiter.completions.create(model="fake", prompt="hi", max_tokens=2).choices[0].text
    assert _records(gateway, c_id) == 1


def _records(gateway: InProcessGateway, tenant_id: str) -> int:
    """The tenant's usage records, once the ledger has written what it holds."""
    deadline = time.monotonic() + 10
    while True:
        with gateway.state.tenancy.db.session() as session:
            count = session.scalar(select(func.count()).where(UsageRecord.tenant_id == tenant_id)) or 0
        if count or time.monotonic() > deadline:
            time.sleep(1)  # anything more (a record of the refused request) would be written by now
            with gateway.state.tenancy.db.session() as session:
                return session.scalar(select(func.count()).where(UsageRecord.tenant_id == tenant_id)) or 0
        time.sleep(0.1)


def test_weight_and_class_in_the_admin_api(in_process: Callable[..., InProcessGateway]) -> None:
    gateway = in_process()
    admin = _admin(gateway)
    made = gateway.http.post("/admin/v1/tenants", json={"name": "weighted", "scheduling_weight": 3}, headers=admin)
    assert made.status_code == 201 and made.json()["scheduling_weight"] == 3
    tenant_id = made.json()["id"]
    changed = gateway.http.patch(f"/admin/v1/tenants/{tenant_id}", json={"scheduling_weight": 5}, headers=admin)
    assert changed.json()["scheduling_weight"] == 5
    bad = gateway.http.patch(f"/admin/v1/tenants/{tenant_id}", json={"scheduling_weight": 0}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "scheduling_weight"

    key = gateway.http.post(f"/admin/v1/tenants/{tenant_id}/keys", json={"priority_class": "batch"}, headers=admin)
    assert key.status_code == 201 and key.json()["priority_class"] == "batch"
    plain = gateway.http.post(f"/admin/v1/tenants/{tenant_id}/keys", json={}, headers=admin)
    assert plain.json()["priority_class"] == "interactive"
    listed = gateway.http.get(f"/admin/v1/tenants/{tenant_id}/keys", headers=admin).json()["data"]
    assert sorted(k["priority_class"] for k in listed) == ["batch", "interactive"]

    tenancy = gateway.state.tenancy
    identity = tenancy.identity_of_key(key.json()["id"])
    assert identity is not None and identity.priority_class == "batch" and identity.scheduling_weight == 5
    # A batch key makes batch keys (unasked: its own class), never an interactive one.
    made_by_batch = tenancy.create_key(tenant_id, KeyCreate(), by_key=key.json()["id"])
    assert made_by_batch.priority_class == "batch"
    with pytest.raises(PermissionDenied) as broader:
        tenancy.create_key(tenant_id, KeyCreate(priority_class="interactive"), by_key=key.json()["id"])
    assert broader.value.code == "key_broader_than_creator"


def test_queue_depth_and_wait_per_class_in_metrics(in_process: Callable[..., InProcessGateway]) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    client.completions.create(model="fake", prompt="hi", max_tokens=2)
    text = gateway.http.get("/metrics", headers=_admin(gateway)).text
    assert 'llmaas_queue_waiting{priority_class="interactive"} 0.0' in text
    assert 'llmaas_queue_waiting{priority_class="batch"} 0.0' in text
    assert 'llmaas_queue_wait_seconds_count{priority_class="interactive"} 1.0' in text
    assert "tenant" not in "\n".join(line for line in text.splitlines() if "queue" in line)
    # The console's service page shows the same, by class.
    queue = {row["priority_class"]: row for row in service_snapshot(gateway.state.metrics.registry)["queue"]}
    assert queue["interactive"]["waiting"] == 0 and queue["interactive"]["wait_p50_seconds"] is not None
    assert queue["batch"] == {
        "priority_class": "batch",
        "waiting": 0,
        "wait_p50_seconds": None,
        "wait_p99_seconds": None,
    }


# -- through a real gateway (llmaas serve, in-process vLLM, the openai client over HTTP) ------------------------
def _waiting_interactive(base: str) -> float:
    text = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30).text
    line = next(line for line in text.splitlines() if line.startswith('llmaas_queue_waiting{priority_class="int'))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.slow
def test_a_neighbour_is_served_while_a_noisy_tenant_waits(model_dir: Path, tmp_path: Path) -> None:
    """The gateway runs 2 sequences (vLLM 3: one burst slot); tenant A opens 3 long streams: two run, one waits in
    the gateway's queue. B's request, sent after them, runs at once in the burst slot, while A's third still
    waits."""
    gateway = served_gateway(
        tmp_path,
        log=tmp_path / "server.log",
        model_path=model_dir,
        kv_cache_space_gib=1,
        log_level="warning",
        max_num_seqs=2,
        embedding_model="",
        embedded_worker="false",
        queue_wait_seconds=600,  # A's third stream waits for one of the first two, however slow the machine
    )
    with gateway:
        noisy = openai_client(gateway.base, tenant_key(gateway.base, "noisy")[1])
        neighbour = openai_client(gateway.base, tenant_key(gateway.base, "neighbour")[1])
        streamed: list[int] = []

        def long_stream() -> None:
            stream = noisy.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=48, stream=True, extra_body={"ignore_eos": True}
            )
            streamed.append(sum(1 for chunk in stream if chunk.choices and chunk.choices[0].text))

        threads = [threading.Thread(target=long_stream) for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while _waiting_interactive(gateway.base) < 1:
            assert time.monotonic() < deadline, "A's streams never queued"
            time.sleep(0.2)
        answer = neighbour.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
        )
        assert answer.choices[0].message.content
        assert _waiting_interactive(gateway.base) >= 1, "B should not have waited behind A's queue"
        for thread in threads:
            thread.join(600)
        assert len(streamed) == 3 and all(count > 0 for count in streamed)
        assert _waiting_interactive(gateway.base) == 0


def test_two_upstream_gateways_share_one_fair_queue(model_dir: Path, tmp_path: Path) -> None:
    """Two gateways on one Redis in front of one replica that runs 2 sequences (+1 burst): A's 4 streams through
    the first take both slots and 2 wait; A's next request through the second gateway waits too (the slots are
    the pool's, not each gateway's); B's request through the second runs at once in the burst slot."""
    port = free_port()
    with (
        fresh_postgres_database("llmaas_fairq") as database_url,
        fake_upstream(port, model_dir, tmp_path / "replica.log", seconds_per_token="0.05"),
    ):
        settings: dict[str, Any] = {
            "engine": "upstream",
            "upstream_urls": f"http://127.0.0.1:{port}",
            "model_path": model_dir,
            "embedded_worker": "false",
            "database_url": database_url,
            "redis_url": "redis://127.0.0.1:6379/13",
            "max_num_seqs": 2,
            "queue_wait_seconds": 120,
        }
        with (
            served_gateway(tmp_path, log=tmp_path / "one.log", **settings) as one,
            served_gateway(tmp_path, log=tmp_path / "two.log", **settings) as two,
        ):
            a_key = tenant_key(one.base, "noisy")[1]
            b_key = tenant_key(one.base, "neighbour")[1]
            noisy_one, noisy_two = openai_client(one.base, a_key), openai_client(two.base, a_key)
            neighbour = openai_client(two.base, b_key)

            def long_stream(client: openai.OpenAI) -> None:
                for _ in client.completions.create(model=MODEL, prompt="x", max_tokens=60, stream=True):
                    pass

            threads = [threading.Thread(target=long_stream, args=(noisy_one,)) for _ in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while _waiting_interactive(one.base) < 2:
                assert time.monotonic() < deadline, "A's streams never queued"
                time.sleep(0.05)
            threads.append(threading.Thread(target=long_stream, args=(noisy_two,)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while _waiting_interactive(two.base) < 1:
                assert time.monotonic() < deadline, "A's request on the second gateway did not wait"
                time.sleep(0.05)
            started = time.monotonic()
            neighbour.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            assert time.monotonic() - started < 2.5  # not behind A's queue (each of A's streams takes ~3 s)
            assert _waiting_interactive(one.base) + _waiting_interactive(two.base) >= 1
            for thread in threads:
                thread.join(120)
            assert _waiting_interactive(one.base) == _waiting_interactive(two.base) == 0


async def test_an_unreachable_redis_queue_is_a_503_never_a_500() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    scheduler = RedisScheduler(dead, limits(), lambda model: 1, lambda cls, seconds: None, lease_seconds=60)
    with pytest.raises(QueueUnavailable) as refused:
        await scheduler.acquire("m", SlotDemand("req_1", "ten_a", "interactive", 1, 1))
    assert refused.value.status_code == 503 and refused.value.headers["retry-after"] == "1"
    await scheduler.close()
