"""The ``llmaas`` command line (typer): serve, prepare the model, and manage tenants, keys and usage.

The management commands work on the database directly (``LLMAAS_DATABASE_URL`` or the data dir's SQLite),
so they need no running server; a running gateway sees their changes within its key-cache TTL (≤ 5 s)."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

app = typer.Typer(help="LLMaaS: a self-hosted, OpenAI-compatible LLM service.", no_args_is_help=True)
tenants_app = typer.Typer(help="Create and manage tenants and their quotas.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke a tenant's API keys.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")


def _service() -> Any:
    from gateway.app import open_database
    from gateway.settings import GatewaySettings
    from gateway.tenancy.service import TenancyService

    return TenancyService(open_database(GatewaySettings()))


def _print(value: Any) -> None:
    def default(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if isinstance(obj, datetime | Decimal):
            return str(obj)
        raise TypeError(type(obj))

    typer.echo(json.dumps(value, default=default, indent=2))


def _run(action: Any) -> None:
    from gateway.errors import APIError

    try:
        _print(action())
    except APIError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


@app.command("prepare-model")
def prepare_model() -> None:
    """Convert the default model (or check the configured one) so that `serve` starts fast."""
    from engine.model_prep import resolve_model_dir
    from engine.settings import EngineSettings

    logging.basicConfig(level=logging.INFO)
    typer.echo(resolve_model_dir(EngineSettings()))


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Interface to bind (default LLMAAS_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default LLMAAS_PORT or 8000)."),
) -> None:
    """Prepare the model if needed, start the engine and serve the OpenAI API (SIGTERM drains it first)."""
    from engine.model_prep import resolve_model_dir
    from engine.settings import EngineSettings
    from gateway.app import create_app
    from gateway.edge.connections import uvicorn_options
    from gateway.ops import drain
    from gateway.private_files import keep_private
    from gateway.settings import GatewaySettings
    from gateway.tenancy.admin_key import admin_key_path, load_or_create_admin_key

    keep_private()
    settings = GatewaySettings()
    host = host or settings.host
    port = port if port is not None else settings.port
    engine_settings = EngineSettings()
    logging.basicConfig(level=settings.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call otherwise
    base_url = f"http://{host}:{port}/v1"
    admin_key, generated = load_or_create_admin_key(settings)
    first_key = _first_run_key()
    # Secrets go to a terminal only, never to a log: without a terminal, say where to get them instead.
    on_terminal = sys.stdout.isatty()
    if first_key and on_terminal:
        key_note = f"  a key of tenant 'default' (shown once): {first_key}\n"
    elif first_key:
        key_note = "  created tenant 'default'; make a key with: llmaas keys create default\n"
    else:
        key_note = "  keys: llmaas tenants create acme && llmaas keys create acme\n"
    admin_note = (
        f"  admin key (shown once, kept 0600 in {admin_key_path(settings.data_dir)}): {admin_key}\n"
        if generated and on_terminal
        else f"  admin key: LLMAAS_ADMIN_KEY or {admin_key_path(settings.data_dir)}\n"
    )
    serving = (
        "the models of the upstream vLLM servers (LLMAAS_UPSTREAM_*)"
        if engine_settings.engine == "upstream"
        else f"model '{engine_settings.served_model_name}'"
    )
    typer.echo(
        f"LLMaaS starting: {serving} at {base_url}\n"
        f"{key_note}{admin_note}"
        f"  from openai import OpenAI\n"
        f"  client = OpenAI(base_url='{base_url}', api_key='{first_key if on_terminal and first_key else 'sk-...'}')\n"
        f"  client.chat.completions.create(model='{engine_settings.served_model_name}', "
        f"messages=[{{'role': 'user', 'content': 'Hello!'}}])"
    )
    # The port is ours from now: uvicorn binds only after the engine has started (~20 s), and meanwhile the
    # engine's own processes may take any free port (and a port in use should fail now, not then).
    listener = _listen(host, port)
    if engine_settings.engine == "vllm" or settings.embedded_worker:
        resolve_model_dir(engine_settings)  # once, before the worker and the engine both look for it
    supervisor = WorkerSupervisor() if settings.embedded_worker else None
    if supervisor is not None:
        supervisor.start()
    try:
        app_ = create_app(settings, engine_settings)
        _tune_garbage_collector()
        drain.serve(
            app_,
            settings.drain_seconds,
            [listener],
            log_level=settings.log_level,
            access_log=False,
            **uvicorn_options(settings),
        )
    finally:
        listener.close()
        if supervisor is not None:
            supervisor.stop()


def _tune_garbage_collector() -> None:
    """Python's default collector runs every 700 allocations and walks every young object each time; a gateway
    allocates thousands per request and keeps a minute of admissions alive in its rate windows, so collections
    cost it ~15 % of its CPU under load (``bench/proxy_overhead.py``). What start-up built is frozen out of
    collection, and young objects are collected every 50,000 allocations instead (reference counting still
    frees nearly everything at once; only cycles wait)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv4 or IPv6, as the host resolves); exits with a message if taken."""
    listener: socket.socket | None = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:  # the port is taken, or the host does not resolve
        if listener is not None:
            listener.close()
        typer.echo(f"cannot listen on {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from exc
    return listener


def _first_run_key() -> str | None:
    """On a fresh install (no tenant yet), a tenant 'default' and a key for it, so the first call works. Of
    several gateways starting together on one empty database, one creates it; the others go on without."""
    from gateway.errors import ConflictError
    from gateway.tenancy.models import KeyCreate, TenantCreate

    service = _service()
    if service.list_tenants():
        return None
    try:
        service.create_tenant(TenantCreate(name="default"))
    except ConflictError:
        return None
    return str(service.create_key("default", KeyCreate(name="first-run")).key)


WORKER_COMMAND = [sys.executable, "-m", "gateway.cli", "worker", "--exit-with-parent"]


class WorkerSupervisor:
    """The fine-tuning worker beside the gateway (``LLMAAS_EMBEDDED_WORKER=false`` to run workers apart): a
    child process, started again with backoff whenever it dies, until the gateway stops."""

    def __init__(self, command: list[str] = WORKER_COMMAND, max_backoff_seconds: float = 60.0) -> None:
        self._command = command
        self._max_backoff = max_backoff_seconds
        self.starts = 0
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="llmaas-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self._process = subprocess.Popen(self._command)
            self.starts += 1
            code = self._process.wait()
            if self._stopping.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, self._max_backoff)
            logging.getLogger(__name__).error("the fine-tuning worker exited (%s); restarting in %.0f s", code, backoff)
            self._stopping.wait(backoff)

    def stop(self) -> None:
        self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._thread.join(timeout=5)


@app.command()
def worker(
    exit_with_parent: bool = typer.Option(False, help="Stop when the process that started this one exits."),
) -> None:
    """Run a fine-tuning worker: claims queued jobs from the database and trains them (LoRA)."""
    from adapters.base_models import trainable_model_dirs
    from adapters.worker import Worker
    from engine.hardware import detect, resolve_dtype
    from engine.settings import EngineSettings
    from gateway.accounting.training_billing import job_charger
    from gateway.app import adapter_registry, file_store, open_database, price_book
    from gateway.private_files import keep_private
    from gateway.settings import GatewaySettings

    keep_private()
    settings = GatewaySettings()
    logging.basicConfig(level=settings.log_level.upper())
    # Training takes whatever CPU the engine leaves: every core when nobody is served, little when they are.
    os.nice(settings.training_nice)
    engine_settings = EngineSettings()
    database = open_database(settings)
    runner = Worker(
        database.sessions,
        adapter_registry(database, settings),
        file_store(database, settings).read,
        trainable_model_dirs(engine_settings),
        on_final=job_charger(price_book(settings)),
        training_threads=settings.training_threads,
        bf16=resolve_dtype(engine_settings.dtype, detect()) == "bfloat16",  # the engine's choice, for the same CPU
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stop())
    if exit_with_parent:
        _stop_with_parent(runner.stop)
    runner.run()


def _stop_with_parent(stop: Any) -> None:
    """uvicorn ends `serve` by re-raising the signal it caught, so `serve` cannot always stop us itself."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        stop()

    threading.Thread(target=watch, daemon=True).start()


_QUOTA_HELP = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "max_concurrent": "concurrent requests",
    "monthly_tokens": "token budget per calendar month",
    "monthly_cost": "cost budget per calendar month, USD",
    "max_tokens_cap": "cap on max_tokens",
}


def _quota_fields(
    rpm: int | None,
    tpm: int | None,
    max_concurrent: int | None,
    monthly_tokens: int | None,
    monthly_cost: str | None,
    max_tokens_cap: int | None,
) -> dict[str, Any]:
    given = {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "max_concurrent_requests": max_concurrent,
        "monthly_token_budget": monthly_tokens,
        "monthly_cost_budget": monthly_cost,
        "max_tokens_cap": max_tokens_cap,
    }
    return {name: value for name, value in given.items() if value is not None}


RPM = typer.Option(None, "--rpm", help=_QUOTA_HELP["rpm"])
TPM = typer.Option(None, "--tpm", help=_QUOTA_HELP["tpm"])
CONCURRENT = typer.Option(None, "--max-concurrent", help=_QUOTA_HELP["max_concurrent"])
MONTHLY_TOKENS = typer.Option(None, "--monthly-tokens", help=_QUOTA_HELP["monthly_tokens"])
MONTHLY_COST = typer.Option(None, "--monthly-cost", help=_QUOTA_HELP["monthly_cost"])
CAP = typer.Option(None, "--max-tokens-cap", help=_QUOTA_HELP["max_tokens_cap"])


@tenants_app.command("create")
def tenants_create(
    name: str,
    rpm: int | None = RPM,
    tpm: int | None = TPM,
    max_concurrent: int | None = CONCURRENT,
    monthly_tokens: int | None = MONTHLY_TOKENS,
    monthly_cost: str | None = MONTHLY_COST,
    max_tokens_cap: int | None = CAP,
) -> None:
    """Create a tenant with optional quotas."""
    from gateway.tenancy.models import TenantCreate

    fields = _quota_fields(rpm, tpm, max_concurrent, monthly_tokens, monthly_cost, max_tokens_cap)
    _run(lambda: _service().create_tenant(TenantCreate(name=name, **fields)))


@tenants_app.command("update")
def tenants_update(
    tenant: str,
    rpm: int | None = RPM,
    tpm: int | None = TPM,
    max_concurrent: int | None = CONCURRENT,
    monthly_tokens: int | None = MONTHLY_TOKENS,
    monthly_cost: str | None = MONTHLY_COST,
    max_tokens_cap: int | None = CAP,
) -> None:
    """Change a tenant's quotas (only the options given)."""
    from gateway.tenancy.models import TenantUpdate

    fields = _quota_fields(rpm, tpm, max_concurrent, monthly_tokens, monthly_cost, max_tokens_cap)
    _run(lambda: _service().update_tenant(tenant, TenantUpdate(**fields)))


@tenants_app.command("list")
def tenants_list() -> None:
    _run(lambda: _service().list_tenants())


@tenants_app.command("show")
def tenants_show(tenant: str) -> None:
    _run(lambda: _service().get_tenant(tenant))


@tenants_app.command("suspend")
def tenants_suspend(tenant: str) -> None:
    from gateway.tenancy.models import TenantUpdate

    _run(lambda: _service().update_tenant(tenant, TenantUpdate(status="suspended")))


@tenants_app.command("resume")
def tenants_resume(tenant: str) -> None:
    from gateway.tenancy.models import TenantUpdate

    _run(lambda: _service().update_tenant(tenant, TenantUpdate(status="active")))


def _content_services() -> tuple[Any, Any]:
    """The tenant eraser and exporter, on the database and the data dir's files and adapters."""
    from gateway.app import adapter_registry, file_store, open_database, price_book
    from gateway.settings import GatewaySettings
    from gateway.tenancy.erasure import TenantEraser
    from gateway.tenancy.export import TenantExport

    settings = GatewaySettings()
    database = open_database(settings)
    files, registry = file_store(database, settings), adapter_registry(database, settings)
    return TenantEraser(database, files, registry, price_book(settings)), TenantExport(database, files, registry)


@tenants_app.command("delete")
def tenants_delete(tenant: str) -> None:
    """Delete a tenant and everything it owns (files, fine-tuning jobs, adapters, evals, sessions, keys); its
    usage records and audit entries stay. Adapters a running gateway has loaded are unloaded when it evicts
    them; deleting through the admin API unloads them at once."""
    from gateway.audit import SYSTEM_ACTOR

    def erase() -> dict[str, Any]:
        erased = _content_services()[0].erase(tenant, SYSTEM_ACTOR)
        return {"id": erased.tenant_id, "deleted": True, "removed": erased.counts}

    _run(erase)


@tenants_app.command("export")
def tenants_export(
    tenant: str, output: str = typer.Option(..., "--output", "-o", help="The archive to write (tar.gz, 0600).")
) -> None:
    """Write everything a tenant owns (files, adapters, jobs, evals, usage, keys without secrets) to a tar.gz."""
    from gateway.audit import SYSTEM_ACTOR
    from gateway.private_files import open_private

    def export() -> dict[str, Any]:
        exports = _content_services()[1]
        tenant_id, _ = exports.begin(tenant, SYSTEM_ACTOR)
        with os.fdopen(open_private(Path(output)), "wb") as out:
            exports.write(tenant_id, out)
        return {"id": tenant_id, "archive": output, "bytes": os.path.getsize(output)}

    _run(export)


@keys_app.command("create")
def keys_create(
    tenant: str,
    name: str = typer.Option("", help="A label for the key."),
    expires_in_days: float | None = typer.Option(None, help="The key stops working after this many days."),
    model: list[str] | None = typer.Option(None, "--model", help="Restrict the key to this model (repeatable)."),
    key_manager: bool = typer.Option(False, "--key-manager", help="The key may revoke the tenant's other keys."),
) -> None:
    """Create an API key; the secret is printed once and never stored."""
    from gateway.audit import OPERATOR, Actor
    from gateway.tenancy.models import KeyCreate

    body = KeyCreate(name=name, expires_in_days=expires_in_days, allowed_models=model or None, key_manager=key_manager)
    _run(lambda: _service().create_key(tenant, body, actor=Actor(OPERATOR)))


@keys_app.command("list")
def keys_list(tenant: str) -> None:
    _run(lambda: _service().list_keys(tenant))


@keys_app.command("revoke")
def keys_revoke(tenant: str, key_id: str) -> None:
    from gateway.audit import OPERATOR, Actor

    _run(lambda: _service().revoke_key(tenant, key_id, actor=Actor(OPERATOR)))


@app.command()
def usage(
    tenant: str | None = typer.Argument(None, help="A tenant's name or id; all tenants if omitted."),
    since: datetime | None = typer.Option(None, help="From this UTC date/time (inclusive)."),
    until: datetime | None = typer.Option(None, help="Until this UTC date/time (exclusive)."),
    bucket: str = typer.Option("day", help="hour, day, month or none."),
    group_by: str = typer.Option("tenant,key,model,kind", help="Comma-separated: tenant, key, model, kind."),
    csv: bool = typer.Option(False, "--csv", help="CSV instead of JSON."),
) -> None:
    """Usage by tenant, key, model and period."""
    from gateway.accounting.usage import UsageFilters, UsageReports, parse_group_by, usage_csv

    if bucket not in ("hour", "day", "month", "none"):
        raise typer.BadParameter("bucket is one of hour, day, month, none")

    def report() -> Any:
        service = _service()
        tenant_id = service.get_tenant(tenant).id if tenant else None
        filters = UsageFilters(since=since, until=until, bucket=bucket)  # type: ignore[arg-type]
        return UsageReports(service.db).report(tenant_id, filters, parse_group_by(group_by))

    if csv:
        typer.echo(usage_csv(report()), nl=False)
    else:
        _run(report)


@app.command("audit")
def audit_log(
    tenant: str | None = typer.Option(None, help="A tenant's name or id (a deleted tenant's id)."),
    actor: str | None = typer.Option(None, help="operator, system, or a key's id."),
    action: str | None = typer.Option(None, help="An action (tenant.delete), or its prefix ending in '.'."),
    since: datetime | None = typer.Option(None, help="From this UTC date/time (inclusive)."),
    until: datetime | None = typer.Option(None, help="Until this UTC date/time (exclusive)."),
    limit: int = typer.Option(100, min=1, max=1000, help="Entries per page."),
    after: int | None = typer.Option(None, help="Entries older than this id (the previous page's last_id)."),
) -> None:
    """The audit log, newest first: who did what to tenants, keys, models, files and sessions."""
    from gateway.audit_log import AuditFilters, AuditLog

    filters = AuditFilters(
        tenant=tenant, actor=actor, action=action, since=since, until=until, after=after, limit=limit
    )
    _run(lambda: AuditLog(_service().db).page(filters))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
