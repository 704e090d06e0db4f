"""Prometheus metrics of one app instance: HTTP requests and latency, tokens in/out, time to first token,
and the engine's queue (read at scrape time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.protocol import Engine
from gateway.generation import RunReport

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self):  # type: ignore[no-untyped-def]
        load = self._engine.load()
        yield GaugeMetricFamily("llmaas_engine_requests_running", "Requests the engine is decoding.", load.running)
        yield GaugeMetricFamily(
            "llmaas_engine_requests_waiting", "Requests queued in the engine (queue depth).", load.waiting
        )
        yield GaugeMetricFamily(
            "llmaas_engine_requests_unfinished",
            "Requests the engine holds (running, waiting or being detokenized).",
            self._engine.unfinished_requests(),
        )
        yield GaugeMetricFamily("llmaas_engine_kv_cache_usage", "KV cache in use (0..1).", load.kv_cache_usage)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.prompt_tokens = Counter(
            "llmaas_prompt_tokens", "Prompt tokens processed.", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "llmaas_completion_tokens", "Completion tokens generated.", ["model"], registry=self.registry
        )
        self.generations = Counter(
            "llmaas_generations", "Generation runs by outcome.", ["model", "outcome"], registry=self.registry
        )
        self.ttft = Histogram(
            "llmaas_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch_engine(self, engine: Engine) -> None:
        self.registry.register(_EngineCollector(engine))

    def observe_run(self, report: RunReport) -> None:
        self.prompt_tokens.labels(report.model).inc(report.usage.prompt_tokens)
        self.completion_tokens.labels(report.model).inc(report.usage.completion_tokens)
        self.generations.labels(report.model, report.outcome).inc()
        if report.time_to_first_token is not None:
            self.ttft.labels(report.model).observe(report.time_to_first_token)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
