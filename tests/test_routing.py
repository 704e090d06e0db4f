"""Routing decisions as pure functions of the replicas' state, and vLLM's ``/metrics`` text as read by the
router (the sample is what vLLM 0.32's CPU server printed here, trimmed to the lines the router reads)."""

from __future__ import annotations

from engine.upstream.discovery import UpstreamSpec
from engine.upstream.replica import ModelCard, Replica
from engine.upstream.routing import Router
from engine.upstream.signals import ReplicaSignals, parse_metrics

VLLM_METRICS = """\
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.79600976357e+09
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-135m-instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="smollm2-135m-instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2-135m-instruct"} 2.0
vllm:num_requests_waiting{engine="1",model_name="smollm2-135m-instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-135m-instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="smollm2-135m-instruct"} 0.5
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="ft:a,ft:b",waiting_lora_adapters="ft:c"} 1.79600985667e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="ft:a",waiting_lora_adapters="ft:a"} 1.79600985665e+09
"""


def test_vllm_metrics_are_summed_over_engines_and_the_newest_lora_series_wins() -> None:
    signals = parse_metrics(VLLM_METRICS)
    assert (signals.running, signals.waiting, signals.kv_cache_usage) == (4, 2, 0.5)
    assert signals.running_adapters == {"ft:a", "ft:b"} and signals.waiting_adapters == {"ft:c"}
    assert signals.max_loras == 2


def replica(name: str, running: int = 0, waiting: int = 0, adapters: tuple[str, ...] = (), **kw: object) -> Replica:
    result = Replica(UpstreamSpec(f"http://{name}:8000"))
    signals = ReplicaSignals(running=running, waiting=waiting, max_loras=2, **kw)  # type: ignore[arg-type]
    result.refresh(signals, {"m": ModelCard("m", "m", 2048)}, list(adapters))
    return result


def test_an_adapter_goes_where_it_runs_then_where_a_slot_is_free_unless_that_is_much_busier() -> None:
    router = Router("adapter-aware")
    running_it = replica("a", running=4, running_adapters=frozenset({"ft:x"}))
    free_slot = replica("b", running=4)
    full = replica("c", running=1, running_adapters=frozenset({"ft:y", "ft:z"}))
    assert router.rank([full, free_slot, running_it], "ft:x")[0] is running_it
    assert router.rank([full, free_slot], "ft:x")[0] is free_slot  # busier, but a slot is free there
    swamped = replica("d", running=40, running_adapters=frozenset({"ft:x"}))
    assert router.rank([swamped, free_slot], "ft:x")[0] is free_slot  # affinity is worth ~5 requests, not 36
    loaded = replica("e", running=4, adapters=("ft:x",))
    assert router.rank([free_slot, loaded], "ft:x")[0] is loaded  # no load needed there


def test_base_requests_go_to_the_least_loaded_and_equals_take_turns() -> None:
    router = Router("adapter-aware")
    idle, busy = replica("a"), replica("b", running=3, waiting=2)
    assert router.rank([busy, idle], None)[0] is idle
    busy.in_flight = 0
    twins = [replica("x"), replica("y")]
    firsts = {router.rank(twins, None)[0].url for _ in range(4)}
    assert firsts == {"http://x:8000", "http://y:8000"}
    ours = replica("z")
    ours.in_flight = 9  # this gateway's own count is fresher than the last scrape
    assert router.rank([ours, busy], None)[0] is busy


def test_round_robin_and_least_busy_ignore_adapters() -> None:
    running_it = replica("a", running=5, running_adapters=frozenset({"ft:x"}))
    other = replica("b", running=0)
    assert Router("least-busy").rank([running_it, other], "ft:x")[0] is other
    robin = Router("round-robin")
    assert [robin.rank([running_it, other], "ft:x")[0] for _ in range(4)] == [running_it, other, running_it, other]
