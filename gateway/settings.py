"""Settings, read from the environment with the ``LLMAAS_`` prefix (pydantic-settings): the gateway's own, and
the root (``Settings``) that the command line reads once and hands down: the gateway's and the engine's
settings, sharing one data dir."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import NoDecode

from engine.settings import EngineSettings, SharedSettings
from gateway.tenancy.models import ModelId, ModelPrice

MiB = 1024 * 1024


class GatewaySettings(SharedSettings):
    host: str = Field(default="127.0.0.1", description="The interface `llmaas serve` binds (also `--host`).")
    port: int = Field(default=8000, ge=0, le=65535, description="The port `llmaas serve` listens on (also `--port`).")
    log_level: str = Field(default="info", description="The log level of the gateway and its access log.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. Unset: SQLite in data_dir."
    )
    redis_url: str | None = Field(default=None, description="Share limits across gateway processes through Redis.")
    admin_key: SecretStr | None = Field(
        default=None, min_length=16, description="Unset: generated on first start into <data_dir>/admin_key (0600)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins whose pages may call the API from the browser (CORS), comma-separated, e.g. "
        "https://chat.example.com; '*' for any. Unset: none (server-side clients need no CORS).",
    )
    console_tenant_keys: bool = Field(
        default=True, description="Tenants may create and revoke their own API keys in the console."
    )
    console_sign_in_failures_per_address: int = Field(
        default=10, ge=1, description="Failed console sign-ins from one client address per minute; then 429."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="`llmaas serve`: addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are "
        "trusted (uvicorn's --forwarded-allow-ips), comma-separated; '*' trusts every peer.",
    )
    metrics_token: SecretStr | None = Field(
        default=None, min_length=16, description="A bearer token that may read /metrics (the admin key always may)."
    )
    key_cache_ttl_seconds: float = Field(
        default=5.0, ge=0, le=5, description="How long a key lookup is cached; revocation elsewhere takes this long."
    )
    key_activity_flush_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often keys' last use is written (each key at most once a minute, never per request).",
    )
    alias_cache_ttl_seconds: float = Field(
        default=2.0,
        ge=0,
        le=10,
        description="How long a gateway keeps a tenant's aliases; a move elsewhere takes this long.",
    )
    embedded_worker: bool = Field(default=True, description="`llmaas serve` also runs a fine-tuning worker.")
    training_threads: int | None = Field(
        default=None, ge=1, description="Threads a fine-tuning worker trains with; unset: every core."
    )
    training_nice: int = Field(
        default=10, ge=0, le=19, description="How much lower the worker's CPU priority is than the gateway's."
    )
    eval_concurrency: int = Field(default=16, ge=1, description="Samples of one eval run in flight at once.")
    eval_grader_max_tokens: int = Field(
        default=128,
        ge=16,
        le=4096,
        description="Tokens a model grader's judge may generate per item (its answer is a small JSON object); a "
        "grader asking for more (sampling_params.max_completions_tokens) is refused when the eval is created.",
    )
    eval_grader_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How long a model grader's judge may generate for one item; longer is that item's error.",
    )
    batch_concurrency: int = Field(default=8, ge=1, description="Requests of one batch a gateway runs at once.")
    batch_lease_seconds: float = Field(
        default=30.0, gt=0, description="A batch whose runner has not heartbeaten for this long is taken over."
    )
    batch_price_fraction: Decimal = Field(
        default=Decimal("0.5"), gt=0, le=1, description="A batch request costs its model's price times this."
    )
    default_max_batch_requests: int = Field(
        default=50_000, ge=1, description="Requests one batch may hold, for tenants without their own limit."
    )
    default_max_enqueued_batch_tokens: int = Field(
        default=50_000_000,
        ge=1,
        description="Tokens a tenant's unfinished batches may hold together (an upper bound: each line's bytes plus "
        "its most completion tokens), for tenants without their own limit.",
    )
    tenant_work_processes: int = Field(
        default=2, ge=1, description="Worker processes that check eval items against schemas and grade them."
    )
    structured_compile_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long a structured-output constraint (JSON schema, regex, grammar) may take to compile; "
        "one that takes longer is refused (structured_output_too_complex).",
    )
    structured_compile_processes: int = Field(
        default=2, ge=1, description="Worker processes that compile clients' structured-output constraints."
    )
    reservation_lease_seconds: float = Field(
        default=900, gt=0, description="Redis: a crashed gateway's reservations and slots are freed after this."
    )
    training_reservation_lease_seconds: float = Field(
        default=7 * 24 * 3600, gt=0, description="Redis: how long a fine-tuning job's budget reservation may live."
    )

    # -- the ledger -------------------------------------------------------------------------------------------
    meter_flush_interval_seconds: float = Field(
        default=0.5, gt=0, le=1, description="Usage records are written in batches this often."
    )
    ledger_queue_capacity: int = Field(
        default=10_000,
        ge=1,
        description="Usage records admitted but not yet written; beyond it requests get 503 (nothing is dropped).",
    )
    ledger_shutdown_seconds: float = Field(
        default=10, ge=0, description="At shutdown, how long to keep writing before the rest is left to the journal."
    )
    drain_seconds: float = Field(
        default=15, ge=0, description="On SIGTERM, how long admitted requests may run on before they are cut."
    )

    # -- fair queuing (gateway/scheduling/) ------------------------------------------------------------------
    fair_queuing: bool = Field(
        default=True,
        description="When the engine is saturated, admit waiting requests by priority class, then by each "
        "tenant's weighted fair share; false: first come, first served.",
    )
    queue_max_waiting_per_tenant: int = Field(
        default=64, ge=1, description="Requests of one tenant waiting for the engine; beyond it 429 (queue_full)."
    )
    queue_max_waiting: int = Field(
        default=1024, ge=1, description="Requests waiting for the engine in all; beyond it 503 (server_queue_full)."
    )
    queue_wait_seconds: float = Field(
        default=60, gt=0, description="Longest a request waits for the engine; then 503 (queue_timeout)."
    )
    scheduler_capacity: int | None = Field(
        default=None,
        ge=1,
        description="Sequences the gateway lets run on a model at once; unset: LLMAAS_MAX_NUM_SEQS (times the "
        "replicas serving the model, upstream).",
    )

    # -- what one request may ask for (refused before any expensive work) ---------------------------------------
    max_body_bytes: int = Field(default=2 * MiB, ge=1024, description="Largest JSON body of any route.")
    max_upload_bytes: int = Field(default=64 * MiB, ge=1, description="Largest file accepted by /v1/files.")
    max_prompt_chars: int | None = Field(
        default=None, ge=1, description="Characters of prompt per request; unset: 16 x the model's context length."
    )
    max_prompts_per_request: int = Field(default=32, ge=1, description="Prompts in one /v1/completions request.")
    max_choices_per_request: int = Field(default=64, ge=1, description="Prompts x n of one request.")
    max_generated_tokens_per_request: int = Field(
        default=65_536, ge=1, description="Prompts x n x max_tokens of one request."
    )
    responses_max_chain_depth: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Responses one previous_response_id chain may hold; continuing a longer one is a 400.",
    )
    default_max_storage_bytes: int = Field(
        default=1024 * MiB, ge=0, description="A tenant's file storage when its own quota is not set."
    )
    default_model_prices: dict[ModelId, ModelPrice] = Field(
        default_factory=dict,
        description='Prices for tenants whose own list has none for a model (nor its base): JSON {"model": '
        '{"input": USD per 1M prompt tokens, "output": ..., "training": ... (optional), "cached_input": ... '
        "(optional)}}.",
    )
    cached_input_price_fraction: Decimal = Field(
        default=Decimal("0.5"),
        ge=0,
        le=1,
        decimal_places=4,
        description="A cached prompt token (read from the engine's prefix cache) costs this fraction of the model's "
        "input price, where its price entry names no cached_input price of its own.",
    )

    # -- retention (unset: kept until deleted) ------------------------------------------------------------------
    retention_days_files: float | None = Field(
        default=None, gt=0, description="Uploaded files older than this many days are deleted; unset: kept."
    )
    retention_days_eval_items: float | None = Field(
        default=None,
        gt=0,
        description="Items and samples of eval runs finished this many days ago are deleted; unset: kept.",
    )
    retention_days_responses: float | None = Field(
        default=30,
        gt=0,
        description="Stored responses of /v1/responses older than this many days are deleted (OpenAI keeps them "
        "30 days); unset: kept until deleted.",
    )
    retention_days_chat_completions: float | None = Field(
        default=30,
        gt=0,
        description="Chat completions stored with store: true older than this many days are deleted (OpenAI keeps "
        "them 30 days); unset: kept until deleted.",
    )
    retention_days_webhook_deliveries: float | None = Field(
        default=30, gt=0, description="Webhook deliveries that ended this many days ago are deleted; unset: kept."
    )
    retention_interval_seconds: float = Field(default=3600, gt=0, description="How often retention runs.")
    idempotency_retention_hours: float = Field(
        default=24, gt=0, description="How long a create's Idempotency-Key and its answer are kept for retries."
    )

    # -- webhooks (gateway/webhooks/) ---------------------------------------------------------------------------
    webhook_allow_private: bool = Field(
        default=False,
        description="Webhooks may go to loopback, private, link-local and other non-public addresses (the "
        "operator's own network). Off: such destinations are refused at creation and again at each delivery.",
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names webhooks may go to ('*.example.com' takes its subdomains); unset: "
        "any host whose addresses are public.",
    )
    webhook_secrets_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Encrypts the endpoints' signing secrets in the database; every gateway needs the same one. "
        "Unset: generated on first start into <data_dir>/webhook_secrets_key (0600).",
    )
    webhook_max_endpoints: int = Field(default=10, ge=1, le=100, description="Webhook endpoints per tenant.")
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=20, description="Deliveries of one event to one endpoint before it is marked failed."
    )
    webhook_retry_base_seconds: float = Field(
        default=60,
        gt=0,
        description="The wait after a failed delivery; doubled after each further failure (with 20% jitter).",
    )
    webhook_retry_max_seconds: float = Field(
        default=3 * 3600, gt=0, description="The longest wait between two deliveries of one event."
    )
    webhook_timeout_seconds: float = Field(
        default=10, gt=0, le=60, description="A delivery's whole request (connect, send, answer) must end within this."
    )
    webhook_concurrency: int = Field(default=8, ge=1, description="Deliveries one gateway makes at once.")
    webhook_tenant_concurrency: int = Field(
        default=4, ge=1, description="Deliveries of one tenant in flight at once, on all gateways together."
    )
    webhook_lease_seconds: float = Field(
        default=120,
        gt=0,
        description="A delivery claimed by a gateway that has not finished it this long after is taken over.",
    )
    webhook_poll_seconds: float = Field(default=1.0, gt=0, description="How often a gateway looks for due deliveries.")

    # -- slow and greedy clients (connection limits: gateway/edge/connections.py) ----------------------------
    body_read_timeout_seconds: float = Field(
        default=120, gt=0, description="A request body not fully received this long after its headers: 408."
    )
    header_read_timeout_seconds: float = Field(
        default=30, gt=0, description="A connection that has not sent a request's headers this long is closed."
    )
    keep_alive_timeout_seconds: float = Field(
        default=5, gt=0, description="An idle connection between two requests is closed after this (uvicorn's)."
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="A request's line and headers beyond this: 431, connection closed."
    )
    max_connections_per_address: int | None = Field(
        default=1024, ge=1, description="Open connections from one client address; beyond it 429. Unset: no cap."
    )

    @field_validator("webhook_lease_seconds")
    @classmethod
    def _lease_outlasts_a_try(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("webhook_timeout_seconds")
        if timeout is not None and value <= timeout:
            raise ValueError("must be longer than webhook_timeout_seconds, else a try still running is taken over")
        return value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().lower().rstrip(".") for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"a CORS origin is '*' or starts with http:// or https://: {origin!r}")
        return value


@dataclass(frozen=True)
class Settings:
    """The settings root: read from the environment once, by the command line, and handed down."""

    gateway: GatewaySettings
    engine: EngineSettings

    @classmethod
    def from_environment(cls) -> Settings:
        gateway = GatewaySettings()
        return cls(gateway, EngineSettings(data_dir=gateway.data_dir))
