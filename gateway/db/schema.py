"""The tables: tenants (with their quotas), API keys (hash + display prefix only), the usage ledger and uploaded
files. Columns that keep client-supplied strings take their length from ``gateway.bounds``, as the API does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gateway import bounds


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(bounds.TENANT_NAME), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # Quotas; NULL means unlimited.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_concurrent_requests: Mapped[int | None] = mapped_column(Integer)
    monthly_token_budget: Mapped[int | None] = mapped_column(BigInteger)
    monthly_cost_budget: Mapped[Any | None] = mapped_column(Numeric(20, 9))
    max_tokens_cap: Mapped[int | None] = mapped_column(Integer)
    # {"model id": {"input": USD per 1M tokens, "output": USD per 1M tokens}}
    model_prices: Mapped[dict[str, dict[str, str]]] = mapped_column(JSON, default=dict)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)
    """Uploaded files may take this much; NULL: the server's default (``LLMAAS_DEFAULT_MAX_STORAGE_BYTES``)."""
    scheduling_weight: Mapped[int | None] = mapped_column(Integer)
    """The tenant's share of a saturated engine against other tenants of the same priority class; NULL: 1."""
    max_batch_requests: Mapped[int | None] = mapped_column(Integer)
    """The most requests one batch may hold; NULL: the server's default."""
    max_enqueued_batch_tokens: Mapped[int | None] = mapped_column(BigInteger)
    """The most tokens the tenant's unfinished batches may hold together; NULL: the server's default."""
    store_completions: Mapped[bool | None] = mapped_column(Boolean)
    """Whether ``store: true`` may keep the tenant's chat completions; NULL: it may."""

    keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(bounds.KEY_NAME), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    key_manager: Mapped[bool] = mapped_column(Boolean, default=False)
    """A key manager may revoke the tenant's other keys; any key may only create keys no broader than itself."""
    priority_class: Mapped[str] = mapped_column(String(16), default="interactive", server_default="interactive")
    """The key's requests wait in this class when the engine is saturated: ``interactive`` before ``batch``."""
    created_by_key_id: Mapped[str | None] = mapped_column(String(40), index=True)
    """The tenant key that made this one (NULL: the operator): revoking a key revokes the keys it made."""
    monthly_token_budget: Mapped[int | None] = mapped_column(BigInteger)
    monthly_cost_budget: Mapped[Any | None] = mapped_column(Numeric(20, 9))
    """The key's own monthly budgets, within the tenant's (NULL: only the tenant's)."""
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    """When the key was last seen, to the minute (``gateway.tenancy.key_activity`` writes it in batches)."""

    tenant: Mapped[Tenant] = relationship(back_populates="keys")


class UsageRecord(Base):
    """One row per admitted request (and per fine-tuning job). Kept when its tenant or key is deleted.

    ``request_id`` is the server's id of the request (or the job's id) and unique: a record written twice (a
    retried batch, a spool replayed after a restart) is counted once."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_tenant_time", "tenant_id", "created_at"),
        Index("ux_usage_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128))
    client_request_id: Mapped[str | None] = mapped_column(String(bounds.CLIENT_REQUEST_ID))
    """The client's own correlation id, if it sent one; never a key of anything."""
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(bounds.MODEL))
    kind: Mapped[str] = mapped_column(String(16), default="inference")
    outcome: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Of ``prompt_tokens``, those the engine read from its prefix cache (billed at the cached-input price)."""
    cost: Mapped[Any] = mapped_column(Numeric(20, 9), default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    end_user: Mapped[str | None] = mapped_column(String(bounds.USER))
    """The request's ``user`` field: the tenant's own end-user id, kept for its abuse monitoring."""


class UsageDaily(Base):
    """The ledger summed per tenant, day (UTC), key, model and kind: what usage pages and reports read, so they
    cost the same with millions of ledger rows as with a hundred. Kept in the ledger writer's transaction, from
    the rows it actually inserted (a record written twice is summed once)."""

    __tablename__ = "usage_daily"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    """``YYYY-MM-DD``."""
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """The key's id, or ``""`` for usage without one (fine-tuning jobs)."""
    model: Mapped[str] = mapped_column(String(bounds.MODEL), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost: Mapped[Any] = mapped_column(Numeric(24, 9))


class File(Base):
    """An uploaded file; its bytes live in the data dir under the file's id (never a client-given name)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str] = mapped_column(String(bounds.FILENAME))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Eval(Base):
    """An evaluation: the schema of its items and how each sample is graded (``/v1/evals``)."""

    __tablename__ = "evals"
    __table_args__ = (Index("ix_evals_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(bounds.EVAL_NAME))
    item_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    include_sample_schema: Mapped[bool] = mapped_column(Boolean, default=False)
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    stored_completions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The ``stored_completions`` data source config (its ``metadata``) of an eval over stored chat completions;
    NULL: a ``custom`` one."""


class EvalRun(Base):
    """One run of an eval against a model; executed by a gateway's eval runner, item by item."""

    __tablename__ = "eval_runs"
    __table_args__ = (
        Index("ix_eval_runs_eval_created", "eval_id", "created_at"),
        Index("ix_eval_runs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    eval_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    """The key that created the run: its usage is metered as that key's."""
    name: Mapped[str] = mapped_column(String(bounds.EVAL_NAME))
    model: Mapped[str] = mapped_column(String(bounds.MODEL))
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    per_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    usage: Mapped[dict[str, int]] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    runner_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)


class EvalRunItem(Base):
    """One data-source item of a run: pending until sampled and graded, then its sample and results."""

    __tablename__ = "eval_run_items"
    __table_args__ = (Index("ix_eval_run_items_run_position", "run_id", "position"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(Integer)
    item: Mapped[dict[str, Any]] = mapped_column(JSON)
    given_sample: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """A sample the data source brought along (``jsonl`` runs grade it instead of generating one)."""
    sample: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    results: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ConsoleSession(Base):
    """A console sign-in, kept server-side: the cookie names the row, and a page or bridge call is served only
    while the row is neither ended (sign-out, key revoked, tenant suspended or deleted) nor expired."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """A hash of the random session id the cookie carries (a database read reveals no usable session)."""
    subject: Mapped[str] = mapped_column(String(40), index=True)
    """``operator``, or the id of the tenant key signed in with."""
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    client_address: Mapped[str | None] = mapped_column(String(64))


class AuditEntry(Base):
    """Who did what to tenants, keys, models, files and sessions. Append-only: the API never updates or deletes
    a row, and rows are kept when their tenant is deleted (they hold ids, never content)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"), Index("ix_audit_log_tenant_at", "tenant_id", "at"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(64))
    """``operator``, ``system``, or the id of the tenant key (or console session's key) that acted."""
    actor_tenant_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(64))
    """``tenant.create``, ``key.revoke``, ``session.end``, ``file.delete``, ..."""
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(256))
    tenant_id: Mapped[str | None] = mapped_column(String(40))
    """The tenant the target belongs to."""
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class StoredResponse(Base):
    """A response of ``/v1/responses`` made with ``store`` (the default): its object as answered, what it
    continued, and how many responses its chain holds (itself included). Deleted by its owner, by the
    retention of responses, or with its tenant."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    depth: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ResponseInputItem(Base):
    """One input item of a stored response (a message), in the order it was sent."""

    __tablename__ = "response_input_items"
    __table_args__ = (
        Index("ix_response_input_items_response_position", "response_id", "position"),
        Index("ux_response_input_items_item_id", "item_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(String(64))
    item_id: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    item: Mapped[dict[str, Any]] = mapped_column(JSON)


class Batch(Base):
    """A batch of requests (``/v1/batches``): read from a ``batch`` file at creation, one ``BatchRequest`` per
    line, run by whichever gateway's batch runner leases it (``runner_id``, ``heartbeat_at``)."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_tenant_created", "tenant_id", "created_at"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(40))
    """The key that created the batch: its requests run, are admitted and metered as that key's."""
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(bounds.MODEL))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """Why validation failed: ``{code, message, param, line}`` each."""
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    enqueued_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    """An upper bound of the tokens its requests may take (what ``max_enqueued_batch_tokens`` counts)."""
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime)
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime)
    runner_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)


class BatchRequest(Base):
    """One line of a batch: pending until run, then its response (or error) and the tokens it was billed for.
    ``request_id`` is minted at creation and is the ledger's id of the request, so a request re-run after a crash
    is billed once."""

    __tablename__ = "batch_requests"
    __table_args__ = (
        Index("ix_batch_requests_batch_line", "batch_id", "line"),
        Index("ux_batch_requests_request_id", "request_id", unique=True),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(40))
    line: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str] = mapped_column(String(bounds.BATCH_CUSTOM_ID))
    request_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The output line's ``response`` (status code, request id, body), or None when ``error`` says why not."""
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class IdempotencyKey(Base):
    """A create request sent with an ``Idempotency-Key``: the tenant's key on one endpoint, a digest of the request,
    and its answer once it succeeded (no answer yet: in flight). Kept for the retention, deleted with the tenant
    (``gateway.idempotency``)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        Index("ux_idempotency_keys_tenant_endpoint_key", "tenant_id", "endpoint", "key", unique=True),
        Index("ix_idempotency_keys_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class StoredCompletion(Base):
    """A chat completion made with ``store: true``: the request that shaped it (messages, parameters, tools), the
    completion object as answered (the concrete model), the tenant's ``metadata``, and the bytes both take (counted
    in the tenant's storage quota with its files). Deleted by its owner, by retention, or with its tenant."""

    __tablename__ = "stored_completions"
    __table_args__ = (
        Index("ix_stored_completions_tenant_created", "tenant_id", "created_at"),
        Index("ix_stored_completions_tenant_model_created", "tenant_id", "model", "created_at"),  # the model filter
        Index("ix_stored_completions_created", "created_at"),  # retention's sweep over all tenants
        Index("ix_stored_completions_tenant_bytes", "tenant_id", "bytes"),  # the quota's sum, from the index alone
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(bounds.MODEL))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    completion: Mapped[dict[str, Any]] = mapped_column(JSON)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class WebhookEndpoint(Base):
    """A tenant's webhook endpoint (``/v1/webhook_endpoints``): where its events are POSTed, which ones, and the
    secret they are signed with, encrypted (``gateway.webhooks.secrets``); after a rotation that keeps the old
    secret, that one too until ``previous_secret_expires_at``."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(bounds.WEBHOOK_NAME))
    url: Mapped[str] = mapped_column(String(bounds.WEBHOOK_URL))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    paused_by_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    """Disabled by the operator: only the operator enables it again."""
    secret: Mapped[str] = mapped_column(String(256))
    secret_hint: Mapped[str] = mapped_column(String(32))
    previous_secret: Mapped[str | None] = mapped_column(String(256))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    """Failed tries in a row (of any of its deliveries); 0 after one is delivered."""
    retry_at: Mapped[datetime | None] = mapped_column(DateTime)
    """After a failed try: none of its deliveries is tried before this (the endpoint's own backoff, so that one
    dead receiver holds one try per interval, not one per queued event)."""
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ModelAlias(Base):
    """A tenant's model alias: a name its clients call that stands for one of its models or a weighted split of
    two (``targets``: ``[{"model", "weight"}]``, weights summing to 100), with an optional standing eval ``gate``
    every move must pass (``gateway.aliases``). ``version`` is the history row now in force."""

    __tablename__ = "model_aliases"
    __table_args__ = (Index("ux_model_aliases_tenant_name", "tenant_id", "name", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(bounds.ALIAS_NAME))
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row written in the transaction that ended the job, run or batch, the
    exact body that is signed and sent, and its deliveries so far. Leased by the gateway delivering it
    (``runner_id``, ``heartbeat_at``), due at ``next_attempt_at``; ``pending`` until ``delivered`` or ``failed``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_tenant", "tenant_id"),
        Index("ix_webhook_deliveries_endpoint_status", "endpoint_id", "status"),
        Index("ix_webhook_deliveries_lease", "runner_id", "heartbeat_at"),
        Index("ix_webhook_deliveries_ended", "status", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40))
    """The event's id (``evt_...``): its ``webhook-id`` on every try, and the same for every endpoint."""
    endpoint_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(String(4096))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    response_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    runner_id: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)


class ModelAliasVersion(Base):
    """One setting of an alias (its creation, a move or a rollback), numbered from 1 per alias. ``restores`` is
    the version a rollback of this one goes back to (the one in force before it, less what was rolled back)."""

    __tablename__ = "model_alias_versions"
    __table_args__ = (
        Index("ux_model_alias_versions_alias_version", "alias_id", "version", unique=True),
        Index("ix_model_alias_versions_tenant", "tenant_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    alias_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    """``create``, ``move`` or ``rollback``."""
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    restores: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ServiceMinute(Base):
    """One gateway's generation requests in one minute (``gateway.ops.minutes``): counts by outcome and latency and
    time-to-first-token buckets. Each gateway overwrites its own rows; the service page merges every gateway's."""

    __tablename__ = "service_minutes"
    __table_args__ = (Index("ix_service_minutes_minute", "minute"),)

    gateway_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    """UTC epoch seconds // 60."""
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
