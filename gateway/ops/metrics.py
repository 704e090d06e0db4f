"""Prometheus metrics of one app instance: HTTP requests and latency, tokens in/out, time to first token, the
backend's queue (read from its status at scrape time; with several replicas, summed over them and each
replica's state besides) and the ledger writer's backlog and set-aside records.

No label names a tenant: routes are labelled by their template, models by their base model (a fine-tuned model
counts under its base, with ``fine_tuned="true"``; its ``ft:`` name carries the tenant's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.backend import BackendStatus, ReplicaStatus
from gateway.ops.minutes import BUCKETS, GENERATION_ROUTES, MinuteCounts, outcome_of
from gateway.scheduling import PriorityClass

_LATENCY_BUCKETS = BUCKETS[:-1]  # the service page's minute buckets; Prometheus adds its own +Inf
CLIENT_CLOSED = 499
"""The status a request is counted under when its client went away before the answer ended (nginx's "client
closed request"): neither a server error nor an answer."""


class _BackendCollector(Collector):
    def __init__(self, status: Callable[[], BackendStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        load = status.load
        yield GaugeMetricFamily("llmaas_engine_requests_running", "Requests the engine is decoding.", load.running)
        yield GaugeMetricFamily(
            "llmaas_engine_requests_waiting", "Requests queued in the engine (queue depth).", load.waiting
        )
        yield GaugeMetricFamily(
            "llmaas_engine_requests_unfinished",
            "Requests the engine holds (running, waiting or being detokenized).",
            status.unfinished_requests,
        )
        yield GaugeMetricFamily("llmaas_engine_kv_cache_usage", "KV cache in use (0..1).", load.kv_cache_usage)
        if status.speculation is not None:
            yield CounterMetricFamily(
                "llmaas_speculation_draft_tokens",
                "Draft tokens speculative decoding proposed (in this process's engines).",
                status.speculation.drafted,
            )
            yield CounterMetricFamily(
                "llmaas_speculation_accepted_tokens",
                "Draft tokens the model accepted (each one a token emitted without a step of its own).",
                status.speculation.accepted,
            )
        if status.replicas:
            yield from _replica_metrics(status.replicas)


def _replica_metrics(replicas: tuple[ReplicaStatus, ...]) -> Iterator[Metric]:
    gauges = {
        "available": GaugeMetricFamily(
            "llmaas_upstream_available", "1: the replica takes requests (healthy, not ejected).", labels=["replica"]
        ),
        "in_flight": GaugeMetricFamily(
            "llmaas_upstream_requests_in_flight", "This gateway's requests on the replica.", labels=["replica"]
        ),
        "waiting": GaugeMetricFamily(
            "llmaas_upstream_requests_waiting", "The replica's queue, as last scraped.", labels=["replica"]
        ),
        "kv_cache_usage": GaugeMetricFamily(
            "llmaas_upstream_kv_cache_usage", "The replica's KV cache in use (0..1).", labels=["replica"]
        ),
        "adapters_loaded": GaugeMetricFamily(
            "llmaas_upstream_adapters_loaded", "Adapters loaded in the replica.", labels=["replica"]
        ),
    }
    loads = CounterMetricFamily(
        "llmaas_upstream_adapter_loads", "Adapters this gateway loaded into the replica.", labels=["replica"]
    )
    for replica in replicas:
        for field, gauge in gauges.items():
            gauge.add_metric([replica.url], float(getattr(replica, field)))
        loads.add_metric([replica.url], float(replica.adapter_loads))
    yield from gauges.values()
    yield loads


class _LedgerCollector(Collector):
    def __init__(self, backlog: Callable[[], int]) -> None:
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "llmaas_ledger_backlog", "Usage records admitted but not yet written to the ledger.", self._backlog()
        )


class _QueueCollector(Collector):
    def __init__(self, waiting: Callable[[], dict[PriorityClass, int]]) -> None:
        self._waiting = waiting

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "llmaas_queue_waiting",
            "Requests waiting for the engine in this gateway's fair queue, by priority class.",
            labels=["priority_class"],
        )
        for priority_class, count in self._waiting().items():
            gauge.add_metric([priority_class], count)
        yield gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.minutes = MinuteCounts()
        """Generation requests per minute, for the rolling windows every gateway writes (``gateway.ops.minutes``)."""
        self.http_requests = Counter(
            "llmaas_http_requests",
            "HTTP requests served.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "llmaas_http_request_duration_seconds",
            "Time from request to the end of the response.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        by_model = ["model", "fine_tuned"]
        self.prompt_tokens = Counter(
            "llmaas_prompt_tokens", "Prompt tokens processed.", by_model, registry=self.registry
        )
        self.completion_tokens = Counter(
            "llmaas_completion_tokens", "Completion tokens generated.", by_model, registry=self.registry
        )
        self.generations = Counter(
            "llmaas_generations", "Generation runs by outcome.", [*by_model, "outcome"], registry=self.registry
        )
        self.ttft = Histogram(
            "llmaas_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            by_model,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "llmaas_queue_wait_seconds",
            "Time a request waited for a running slot on the engine, by priority class.",
            ["priority_class"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "llmaas_ledger_dead_letter_records",
            "Usage records the database refused, set aside in the ledger's dead-letter file.",
            registry=self.registry,
        )

    def watch_queue(self, waiting: Callable[[], dict[PriorityClass, int]]) -> None:
        self.registry.register(_QueueCollector(waiting))

    def queue_wait_observer(self) -> Callable[[PriorityClass, float], None]:
        """What the scheduler tells how long each admitted request waited."""
        return lambda priority_class, seconds: self.queue_wait.labels(priority_class).observe(seconds)

    def watch_backend(self, status: Callable[[], BackendStatus]) -> None:
        self.registry.register(_BackendCollector(status))

    def watch_ledger(self, backlog: Callable[[], int]) -> None:
        self.registry.register(_LedgerCollector(backlog))

    def observe_run(
        self,
        *,
        model: str,
        fine_tuned: bool,
        outcome: str,
        prompt_tokens: int,
        completion_tokens: int,
        time_to_first_token: float | None,
    ) -> None:
        """A finished run (``gateway.inference.generation.RunReport``) of ``model`` (its base model)."""
        labels = (model, "true" if fine_tuned else "false")
        self.prompt_tokens.labels(*labels).inc(prompt_tokens)
        self.completion_tokens.labels(*labels).inc(completion_tokens)
        self.generations.labels(*labels, outcome).inc()
        if time_to_first_token is not None:
            self.ttft.labels(*labels).observe(time_to_first_token)
            self.minutes.first_token(time_to_first_token)

    def observe_http(self, method: str, route: str, status: int, seconds: float, client_left: bool = False) -> None:
        """A request that ended; ``client_left``: its client disconnected before the answer ended (counted under
        ``CLIENT_CLOSED``, whatever status had been sent)."""
        self.http_requests.labels(method, route, str(CLIENT_CLOSED if client_left else status)).inc()
        self.http_latency.labels(method, route).observe(seconds)
        if route in GENERATION_ROUTES:
            self.minutes.request(outcome_of(status, client_left), seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
