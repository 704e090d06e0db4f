"""The ``llmaas`` command line (typer): serve and prepare the model (``serve``), run a fine-tuning worker
(``worker``), manage tenants and keys (``manage``) and read usage and the audit log (``reports``).

Each command reads the settings root once (``common.settings``) and hands it down. The management commands work
on the database directly (``LLMAAS_DATABASE_URL`` or the data dir's SQLite), so they need no running server; a
running gateway sees their changes within its key-cache TTL (≤ 5 s)."""

from __future__ import annotations

import typer

from gateway.cli import manage, reports, serve, worker

app = typer.Typer(help="LLMaaS: a self-hosted, OpenAI-compatible LLM service.", no_args_is_help=True)
app.command("prepare-model")(serve.prepare_model)
app.command()(serve.serve)
app.command()(worker.worker)
app.add_typer(manage.tenants_app, name="tenants")
app.add_typer(manage.keys_app, name="keys")
app.command()(reports.usage)
app.command("audit")(reports.audit_log)


def main() -> None:
    app()
