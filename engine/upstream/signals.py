"""A replica's load as its ``/metrics`` tells it (vLLM's Prometheus names), parsed with prometheus_client."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class ReplicaSignals:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    running_adapters: frozenset[str] = field(default_factory=frozenset)
    waiting_adapters: frozenset[str] = field(default_factory=frozenset)
    max_loras: int | None = None
    block_size: int | None = None
    """Its KV cache's block size and block count (``vllm:cache_config_info``), for the prefix index."""
    num_blocks: int | None = None
    started_at: float | None = None
    """``process_start_time_seconds``: a change means it restarted (and lost its caches)."""


def _names(label: str) -> frozenset[str]:
    return frozenset(name for name in label.split(",") if name)


def parse_metrics(text: str) -> ReplicaSignals:
    """Sums over the engines of a data-parallel server; of ``vllm:lora_requests_info`` the newest series."""
    running = waiting = 0.0
    kv: list[float] = []
    lora_labels: dict[str, str] | None = None
    lora_stamp = float("-inf")
    cache: dict[str, str] = {}
    started_at: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name == "vllm:num_requests_running":
                running += sample.value
            elif name == "vllm:num_requests_waiting":
                waiting += sample.value
            elif name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                kv.append(sample.value)
            elif name == "vllm:lora_requests_info" and sample.value >= lora_stamp:
                lora_stamp, lora_labels = sample.value, sample.labels
            elif name == "vllm:cache_config_info":
                cache = sample.labels
            elif name == "process_start_time_seconds":
                started_at = sample.value
    max_loras: int | None = None
    if lora_labels and lora_labels.get("max_lora", "").isdigit():
        max_loras = int(lora_labels["max_lora"])
    return ReplicaSignals(
        running=int(running),
        waiting=int(waiting),
        kv_cache_usage=max(kv, default=0.0),
        running_adapters=_names((lora_labels or {}).get("running_lora_adapters", "")),
        waiting_adapters=_names((lora_labels or {}).get("waiting_lora_adapters", "")),
        max_loras=max_loras,
        block_size=_count(cache.get("block_size")),
        num_blocks=_count(cache.get("num_gpu_blocks")),
        started_at=started_at,
    )


def _count(label: str | None) -> int | None:
    return int(label) if label and label.isdigit() and int(label) > 0 else None
