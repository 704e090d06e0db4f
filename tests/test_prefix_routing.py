"""Prefix-aware routing: the prefix index (chained block hashes, bounded, decaying, forgotten on restart or
ejection) and the ranking as pure functions, then through a gateway process in front of two stand-ins for vLLM
(``bench/fake_upstream.py``) with the official client: each tenant's system prompt sticks to one replica, and a
hot prefix spreads over both under load."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import openai

from engine.upstream.prefix_index import PrefixIndex, PrefixMemory, block_hashes
from engine.upstream.routing import Router
from engine.upstream.signals import ReplicaSignals, parse_metrics
from tests.support import MODEL
from tests.support.fake_upstream import fake_upstream, stats
from tests.support.gateway_process import free_port
from tests.support.tenants import openai_client, tenant_key
from tests.test_routing import replica
from tests.test_upstream import upstream_gateway, urls

BLOCK = 4


def prompt(prefix: int, length: int = 40, tail: int = 0) -> list[int]:
    """``length`` tokens of prefix number ``prefix``, then ``tail`` tokens of its own."""
    return [prefix * 1000 + i for i in range(length)] + [7 + i for i in range(tail)]


def test_block_hashes_are_chained_over_full_blocks_only() -> None:
    a, b = block_hashes(prompt(1, 12, tail=6), BLOCK), block_hashes(prompt(1, 12, tail=9), BLOCK)
    assert len(a) == 4 and len(b) == 5  # 18 and 21 tokens: the last partial block is not hashed
    assert a[:4] == b[:4]
    changed_first = [99, *prompt(1, 12)[1:]]
    assert not set(block_hashes(changed_first, BLOCK)) & set(block_hashes(prompt(1, 12), BLOCK))  # chained
    assert block_hashes(prompt(1, 3), BLOCK) == []
    assert not set(block_hashes(prompt(1), BLOCK, (None, "ft:x"))) & set(block_hashes(prompt(1), BLOCK))  # per adapter
    tenants = block_hashes(prompt(1), BLOCK, ("ten_a", None)), block_hashes(prompt(1), BLOCK, ("ten_b", None))
    assert not set(tenants[0]) & set(tenants[1])  # per tenant (vLLM's cache salt)


def test_memory_matches_leading_blocks_and_is_bounded_least_recently_sent_first() -> None:
    memory = PrefixMemory()
    one, two = block_hashes(prompt(1), BLOCK), block_hashes(prompt(2), BLOCK)
    memory.record(one, now=10.0, capacity=15, not_before=0.0)
    assert memory.matched(one, not_before=0.0) == 10
    assert memory.matched(block_hashes(prompt(1, 20) + prompt(3, 20), BLOCK), not_before=0.0) == 5
    memory.record(two, now=11.0, capacity=15, not_before=0.0)
    assert len(memory) == 15  # prefix 1's last five blocks went (a tail goes first, as in vLLM)
    assert memory.matched(one, not_before=0.0) == 5 and memory.matched(two, not_before=0.0) == 10
    assert memory.matched(two, not_before=11.5) == 0  # too old: decayed
    memory.record(one[:1], now=20.0, capacity=15, not_before=15.0)
    assert len(memory) == 1  # the old blocks aged out


def test_the_index_uses_the_replicas_block_size_and_capacity_and_forgets_on_eject_and_restart() -> None:
    index = PrefixIndex(max_blocks=1000)
    holder = replica("a", block_size=BLOCK, num_blocks=6)
    index.record(holder, prompt(1))
    assert len(holder.prefixes) == 6  # its KV cache holds 6 blocks: no more is remembered, the head kept
    assert index.matched_fraction([holder], prompt(1, 24)) == {holder.url: 1.0}
    assert index.matched_fraction([holder], prompt(2)) == {holder.url: 0.0}
    restarted = ReplicaSignals(block_size=BLOCK, num_blocks=6, started_at=123.0)
    holder.refresh(restarted, holder.models, [])
    assert len(holder.prefixes) == 0
    index.record(holder, prompt(1))
    holder.refresh(restarted, holder.models, [])  # the same process: still there
    assert len(holder.prefixes) == 6
    holder.eject(5)
    assert len(holder.prefixes) == 0
    index.record(holder, prompt(1))
    holder.mark_down()
    assert len(holder.prefixes) == 0
    index.record(holder, prompt(1))
    with mock.patch("engine.upstream.prefix_index.time.monotonic", return_value=time.monotonic() + 601):
        assert index.matched_fraction([holder], prompt(1)) == {holder.url: 0.0}  # decayed


def test_vllm_metrics_give_the_cache_geometry_and_the_start_time() -> None:
    text = (
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1.7e+09\n"
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="128",enable_prefix_caching="True",num_gpu_blocks="455"} 1.0\n'
    )
    signals = parse_metrics(text)
    assert (signals.block_size, signals.num_blocks, signals.started_at) == (128, 455, 1.7e9)


def test_a_prefix_goes_where_it_was_sent_until_that_replica_is_much_busier() -> None:
    router = Router("prefix-aware", PrefixIndex(block_size=BLOCK))
    first, second = replica("a"), replica("b")
    router.sent(first, prompt(1))
    router.sent(second, prompt(2))
    for _ in range(4):  # not in turns: where its prefix is
        assert router.rank([first, second], None, prompt(1, tail=5))[0] is first
        assert router.rank([first, second], None, prompt(2, tail=5))[0] is second
    first.in_flight = 3
    assert router.rank([first, second], None, prompt(1))[0] is first  # 3 more requests: still worth it
    first.in_flight = 5
    assert router.rank([first, second], None, prompt(1))[0] is second  # a hot prefix spills over
    first.in_flight = 0
    unknown = {router.rank([first, second], None, prompt(3))[0].url for _ in range(4)}
    assert unknown == {first.url, second.url}  # a new prefix: least loaded, equals in turns
    router.sent(first, prompt(4))
    for _ in range(4):  # ... and the emptier cache first
        assert router.rank([first, second], None, prompt(3))[0] is second
    first.in_flight = 2
    assert router.rank([first, second], None, prompt(4))[0] is first  # its own prefix still goes there


def test_adapter_affinity_and_prefix_add_up_and_baselines_ignore_prefixes() -> None:
    router = Router("prefix-aware", PrefixIndex(block_size=BLOCK))
    running_it = replica("a", running_adapters=frozenset({"ft:x"}))
    full = replica("b", running_adapters=frozenset({"ft:y", "ft:z"}))
    router.sent(full, prompt(1), "ft:y")
    assert router.rank([full, running_it], "ft:x", prompt(1))[0] is running_it  # a load outweighs a prefill
    assert router.rank([full, running_it], "ft:y", prompt(1))[0] is full
    assert router.prefixes.matched_fraction([full], prompt(1), "ft:x") == {full.url: 0.0}  # cached for ft:y only
    baseline = Router("least-busy", router.prefixes)
    baseline.sent(running_it, prompt(2))
    assert len(running_it.prefixes) == 0  # only prefix-aware remembers
    firsts = {baseline.rank([full, running_it], None, prompt(1))[0].url for _ in range(4)}
    assert firsts == {full.url, running_it.url}


def _ask(client: openai.OpenAI, system: str, question: str, max_tokens: int = 2) -> None:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "x" * max_tokens


def test_same_prefix_requests_share_a_replica_and_a_hot_prefix_spreads(tmp_path: Path, model_dir: Path) -> None:
    ports = [free_port(), free_port()]
    systems = [f"You are the assistant of tenant number {n}. " + "Be brief and exact. " * 40 for n in range(6)]
    with (
        fake_upstream(ports[0], model_dir, tmp_path / "a.log", seconds_per_token="0.1"),
        fake_upstream(ports[1], model_dir, tmp_path / "b.log", seconds_per_token="0.1"),
        upstream_gateway(tmp_path, model_dir, upstream_urls=urls(ports), upstream_prefix_block_size="16") as base,
    ):
        client = openai_client(base, tenant_key(base)[1])
        for round_ in range(3):
            for system in systems:
                _ask(client, system, f"Question {round_}?")
        heads = [stats(port)["heads"] for port in ports]
        assert not set(heads[0]) & set(heads[1]), heads  # each prefix went to one replica only
        assert len(heads[0]) + len(heads[1]) == len(systems) and all(heads), heads
        before = [sum(h.values()) for h in heads]
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda n: _ask(client, systems[0], f"Hot {n}?", max_tokens=20), range(12)))
        after = [sum(stats(port)["heads"].values()) for port in ports]
        spread = [a - b for a, b in zip(after, before, strict=True)]
        assert sum(spread) == 12 and min(spread) >= 3, spread  # the hot prefix spilled onto the other replica
