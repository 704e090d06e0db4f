"""Settings of the upstream backend, read from the environment with the ``LLMAAS_UPSTREAM_`` prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

RoutingPolicy = Literal["prefix-aware", "adapter-aware", "least-busy", "round-robin"]


class UpstreamSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMAAS_UPSTREAM_", extra="ignore")

    urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Static replicas: base URLs, comma-separated (http://host:8000)."
    )
    file: Path | None = Field(
        default=None,
        description='A JSON file {"upstreams": [{"url": ..., "api_key": ...}]}, re-read when it changes: the '
        "seam for Kubernetes or Ray discovery (a sidecar writes it).",
    )
    api_key: SecretStr | None = Field(default=None, description="Bearer token for replicas without their own.")
    routing: RoutingPolicy = Field(
        default="prefix-aware",
        description="prefix-aware: adapter-aware plus where the prompt's prefix is likely cached; the others are "
        "baselines.",
    )
    prefix_block_size: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        default=None,
        description="Tokens per hashed prompt block in the prefix index; unset: each replica's own KV block size "
        "(its /metrics), 16 where it does not say. Set it to the replicas' --block-size (vLLM on CPU: 128).",
    )
    prefix_max_blocks: int = Field(default=65536, ge=1, description="Most prompt blocks remembered per replica.")
    prefix_ttl_seconds: float = Field(
        default=600.0, gt=0, description="A prompt block not sent to a replica for this long is forgotten there."
    )
    scrape_interval_seconds: float = Field(
        default=1.0, ge=0.1, le=10, description="How often each replica's /health, /metrics, /v1/models are read."
    )
    connect_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long connecting to a replica may take (a check, a request)."
    )
    read_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Longest silence of a replica within one answer (the first token included): past it the try "
        "fails, and is retried on another replica if none of the answer went out yet.",
    )
    request_deadline_seconds: float = Field(default=900.0, gt=0, description="Longest one request may take.")
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Replicas one request tries while none of its answer went out (a stream before its first "
        "token, a non-streamed answer at any point): after a connect error, reset, silence, 5xx or garbage.",
    )
    eject_seconds: float = Field(
        default=5.0, gt=0, description="How long a replica that failed a request is left out (passive ejection)."
    )
    max_adapters_per_replica: int = Field(
        default=8, ge=1, description="Adapters the gateway keeps loaded in one replica; the least recently used goes."
    )
    adapter_root: str | None = Field(
        default=None,
        description="Where replicas see the adapter store (the shared directory); unset: the same path as here.",
    )
    fallback_max_model_len: int = Field(
        default=4096,
        ge=16,
        description="Context length assumed where a server's /v1/models does not say (Ray Serve, production-stack).",
    )
    tokenizers: dict[str, str] = Field(
        default_factory=dict,
        description='JSON {"model": "dir or hub id"}: the tokenizer of a model; unset: the replica\'s model root.',
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"an upstream URL must start with http:// or https://: {url!r}")
        return [url.rstrip("/") for url in value]
