"""This gateway's state at a glance, read from the same Prometheus registry ``/metrics`` serves: requests running
and waiting in the engine, tokens since start, each upstream replica, and the fair queue's depth and wait per
priority class. The operator's console shows it beside the rolling windows of every gateway
(``gateway.ops.minutes``), which time and count the requests."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.ops.minutes import quantile


def service_snapshot(registry: CollectorRegistry) -> dict[str, Any]:
    gauges: dict[str, float] = {}
    tokens = {"prompt": 0.0, "completion": 0.0}
    replicas: dict[str, dict[str, float]] = defaultdict(dict)
    queue_waiting: dict[str, float] = {}
    queue_waits: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name.startswith("llmaas_engine_"):
                gauges[name.removeprefix("llmaas_engine_")] = value
            elif name in ("llmaas_prompt_tokens_total", "llmaas_completion_tokens_total"):
                tokens[name.split("_")[1]] += value
            elif name == "llmaas_queue_waiting":
                queue_waiting[labels["priority_class"]] = value
            elif name == "llmaas_queue_wait_seconds_bucket":
                queue_waits[labels["priority_class"]][float(labels["le"])] += value
            elif name.startswith("llmaas_upstream_") and "replica" in labels:
                replicas[labels["replica"]][name.removeprefix("llmaas_upstream_")] = value
    return {
        "engine": gauges,
        "tokens": {kind: int(count) for kind, count in tokens.items()},
        "replicas": [{"url": url, **values} for url, values in sorted(replicas.items())],
        "queue": [
            {
                "priority_class": priority_class,
                "waiting": int(waiting),
                "wait_p50_seconds": quantile(sorted(queue_waits[priority_class].items()), 0.5),
                "wait_p99_seconds": quantile(sorted(queue_waits[priority_class].items()), 0.99),
            }
            for priority_class, waiting in queue_waiting.items()
        ],
    }
