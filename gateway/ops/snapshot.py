"""The service's state at a glance, read from the same Prometheus registry ``/metrics`` serves: requests running
and waiting in the engine, error rate, latency and time-to-first-token percentiles (since start, from the
histograms' buckets), tokens, each upstream replica, and the fair queue's depth and wait per priority class. The
operator's console shows it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.ops.minutes import GENERATION_ROUTES, quantile


def service_snapshot(registry: CollectorRegistry) -> dict[str, Any]:
    gauges: dict[str, float] = {}
    requests = errors = 0.0
    tokens = {"prompt": 0.0, "completion": 0.0}
    histograms: dict[str, dict[float, float]] = {"latency": defaultdict(float), "ttft": defaultdict(float)}
    replicas: dict[str, dict[str, float]] = defaultdict(dict)
    queue_waiting: dict[str, float] = {}
    queue_waits: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name.startswith("llmaas_engine_"):
                gauges[name.removeprefix("llmaas_engine_")] = value
            elif name == "llmaas_http_requests_total" and labels.get("route") in GENERATION_ROUTES:
                requests += value
                errors += value if labels.get("status", "").startswith("5") else 0
            elif name == "llmaas_http_request_duration_seconds_bucket" and labels.get("route") in GENERATION_ROUTES:
                histograms["latency"][float(labels["le"])] += value
            elif name == "llmaas_time_to_first_token_seconds_bucket":
                histograms["ttft"][float(labels["le"])] += value
            elif name in ("llmaas_prompt_tokens_total", "llmaas_completion_tokens_total"):
                tokens[name.split("_")[1]] += value
            elif name == "llmaas_queue_waiting":
                queue_waiting[labels["priority_class"]] = value
            elif name == "llmaas_queue_wait_seconds_bucket":
                queue_waits[labels["priority_class"]][float(labels["le"])] += value
            elif name.startswith("llmaas_upstream_") and "replica" in labels:
                replicas[labels["replica"]][name.removeprefix("llmaas_upstream_")] = value
    percentiles = {}
    for kind, buckets in histograms.items():
        ordered = sorted(buckets.items())
        for q in (0.5, 0.95, 0.99):
            percentiles[f"{kind}_p{round(q * 100)}_seconds"] = quantile(ordered, q)
    return {
        "engine": gauges,
        "generation_requests": int(requests),
        "server_errors": int(errors),
        "error_rate": errors / requests if requests else 0.0,
        "tokens": {kind: int(count) for kind, count in tokens.items()},
        **percentiles,
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
