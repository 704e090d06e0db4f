"""``llmaas serve``: bootstrap (``gateway.bootstrap``: database, admin key, model), a first tenant and key on a
fresh install, the banner, then the engine and the OpenAI API under uvicorn (SIGTERM drains it first), with a
fine-tuning worker beside it unless ``LLMAAS_EMBEDDED_WORKER=false``; and ``llmaas prepare-model``."""

from __future__ import annotations

import gc
import logging
import socket
import sys

import typer

from gateway.cli.common import settings
from gateway.settings import Settings
from gateway.tenancy.service import TenancyService


def prepare_model() -> None:
    """Convert the default model (or check the configured one) so that `serve` starts fast."""
    from gateway.bootstrap import prepare_model

    logging.basicConfig(level=logging.INFO)
    typer.echo(prepare_model(settings().engine))


def serve(
    host: str | None = typer.Option(None, help="Interface to bind (default LLMAAS_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default LLMAAS_PORT or 8000)."),
) -> None:
    """Prepare the model if needed, start the engine and serve the OpenAI API (SIGTERM drains it first)."""
    from gateway.app import create_app
    from gateway.bootstrap import bootstrap, prepare_model
    from gateway.cli.worker import WorkerSupervisor
    from gateway.edge.connections import uvicorn_options
    from gateway.ops import drain
    from gateway.private_files import keep_private
    from gateway.state import state_of

    keep_private()
    config = settings()
    gateway, engine = config.gateway, config.engine
    host = host or gateway.host
    port = port if port is not None else gateway.port
    logging.basicConfig(level=gateway.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call otherwise
    booted = bootstrap(gateway)
    first_key = _first_run_key(TenancyService(booted.database))
    generated_key = booted.admin_key if booted.admin_key_generated else None
    typer.echo(_banner(config, f"http://{host}:{port}/v1", first_key, generated_key))
    # The port is ours from now: uvicorn binds only after the engine has started (~20 s), and meanwhile the
    # engine's own processes may take any free port (and a port in use should fail now, not then).
    listener = _listen(host, port)
    if engine.engine == "vllm" or gateway.embedded_worker:
        prepare_model(engine)  # once, before the worker and the engine both look for it
    supervisor = WorkerSupervisor() if gateway.embedded_worker else None
    if supervisor is not None:
        supervisor.start()
    try:
        app = create_app(gateway, engine, bootstrapped=booted)
        _tune_garbage_collector()
        drain.serve(
            app,
            lambda: state_of(app).admission,
            gateway.drain_seconds,
            [listener],
            log_level=gateway.log_level,
            access_log=False,
            **uvicorn_options(gateway),
        )
    finally:
        listener.close()
        if supervisor is not None:
            supervisor.stop()


def _banner(config: Settings, base_url: str, first_key: str | None, generated_admin_key: str | None) -> str:
    """What `serve` prints at start. Secrets go to a terminal only, never to a log: without a terminal, it says
    where to get them instead."""
    from gateway.tenancy.admin_key import admin_key_path

    engine, key_file = config.engine, admin_key_path(config.gateway.data_dir)
    on_terminal = sys.stdout.isatty()
    if first_key and on_terminal:
        key_note = f"  a key of tenant 'default' (shown once): {first_key}\n"
    elif first_key:
        key_note = "  created tenant 'default'; make a key with: llmaas keys create default\n"
    else:
        key_note = "  keys: llmaas tenants create acme && llmaas keys create acme\n"
    admin_note = (
        f"  admin key (shown once, kept 0600 in {key_file}): {generated_admin_key}\n"
        if generated_admin_key and on_terminal
        else f"  admin key: LLMAAS_ADMIN_KEY or {key_file}\n"
    )
    serving = (
        "the models of the upstream vLLM servers (LLMAAS_UPSTREAM_*)"
        if engine.engine == "upstream"
        else f"model '{engine.served_model_name}'"
    )
    return (
        f"LLMaaS starting: {serving} at {base_url}\n"
        f"{key_note}{admin_note}"
        f"  from openai import OpenAI\n"
        f"  client = OpenAI(base_url='{base_url}', api_key='{first_key if on_terminal and first_key else 'sk-...'}')\n"
        f"  client.chat.completions.create(model='{engine.served_model_name}', "
        f"messages=[{{'role': 'user', 'content': 'Hello!'}}])"
    )


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


def _first_run_key(tenancy: TenancyService) -> str | None:
    """On a fresh install (no tenant yet), a tenant 'default' and a key for it, so the first call works. Of
    several gateways starting together on one empty database, one creates it; the others go on without."""
    from gateway.errors import ConflictError
    from gateway.tenancy.models import KeyCreate, TenantCreate

    if tenancy.list_tenants():
        return None
    try:
        tenancy.create_tenant(TenantCreate(name="default"))
    except ConflictError:
        return None
    return str(tenancy.create_key("default", KeyCreate(name="first-run")).key)
