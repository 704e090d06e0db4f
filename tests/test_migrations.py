"""Upgrading an install that has data (the operations guide's "Upgrading"): a database made by the first schema,
with a tenant, its key and usage, and then a succeeded fine-tuning job with its adapter, goes up one migration at a
time to the last, where a gateway serves that key, that usage and that ``ft:`` model; then down one migration at a
time, with its data, to the first schema and below it (the tenants' keys kept all the way down)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from gateway.db.database import MIGRATIONS_DIR, Database, sqlite_url
from gateway.tenancy.keys import display_prefix, key_hash, new_key
from tests.support import ADMIN, MODEL
from tests.support.in_process import in_process_gateway

TENANT = "ten_0123456789abcdef01234567"
JOB = "ftjob-0123456789abcdef01234567"
FT_MODEL = f"ft:{MODEL}:migrated:legacy:01234567"
USAGE = [(7, 11), (5, 3)]  # (prompt, completion) tokens of each request


def migrations_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@contextmanager
def alembic(database: Database) -> Iterator[Config]:
    """Alembic on ``database``'s connection, in one transaction, as ``Database.migrate`` runs it."""
    config = migrations_config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        yield config


def revisions() -> list[str]:
    """Every revision, first to last."""
    script = ScriptDirectory.from_config(migrations_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def seed_first_schema(connection: Connection, key: str) -> None:
    now = datetime.utcnow().replace(microsecond=0)
    connection.execute(
        text(
            "INSERT INTO tenants (id, name, status, created_at, updated_at, model_prices) "
            "VALUES (:id, 'migrated', 'active', :now, :now, '{}')"
        ),
        {"id": TENANT, "now": now},
    )
    connection.execute(
        text(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, created_at) "
            "VALUES ('key_0123456789abcdef01234567', :tenant, 'first', :prefix, :hash, :now)"
        ),
        {"tenant": TENANT, "prefix": display_prefix(key), "hash": key_hash(key), "now": now},
    )
    for number, (prompt, completion) in enumerate(USAGE):
        connection.execute(
            text(
                "INSERT INTO usage_records (request_id, tenant_id, key_id, model, kind, outcome, prompt_tokens, "
                "completion_tokens, cost, created_at) VALUES (:request, :tenant, 'key_0123456789abcdef01234567', "
                ":model, 'inference', 'completed', :prompt, :completion, 0, :now)"
            ),
            {
                "request": f"client-{number}",
                "tenant": TENANT,
                "model": MODEL,
                "prompt": prompt,
                "completion": completion,
                "now": now,
            },
        )


def seed_fine_tuning(connection: Connection) -> None:
    now = datetime.utcnow().replace(microsecond=0)
    connection.execute(
        text(
            "INSERT INTO fine_tuning_jobs (id, tenant_id, tenant_name, model, training_file, seed, hyperparameters, "
            "lora, method, status, fine_tuned_model, trained_tokens, estimated_tokens, created_at, finished_at, "
            "cancel_requested, settled_at) VALUES (:job, :tenant, 'migrated', :model, 'file-0123456789abcdef01234567', "
            "1, :hyper, :lora, 'supervised', 'succeeded', :ft, 100, 100, :now, :now, 0, :now)"
        ),
        {
            "job": JOB,
            "tenant": TENANT,
            "model": MODEL,
            "ft": FT_MODEL,
            "now": now,
            "hyper": json.dumps({"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}),
            "lora": json.dumps({"rank": 8, "alpha": 16, "target_modules": ["q_proj"], "layers": 2}),
        },
    )
    connection.execute(
        text(
            "INSERT INTO adapters (name, tenant_id, base_model, job_id, path, created_at) "
            "VALUES (:ft, :tenant, :model, :job, :path, :now)"
        ),
        {"ft": FT_MODEL, "tenant": TENANT, "model": MODEL, "job": JOB, "path": f"{JOB}/adapter", "now": now},
    )


def migrated_with_data(data_dir: Path, key: str) -> list[str]:
    """The database in ``data_dir`` made by the first schema, seeded there (and at 0002), then brought up one
    migration at a time to the last; the revisions, first to last."""
    steps = revisions()
    assert steps[0] == "0001" and len(steps) >= 16
    database = Database(sqlite_url(data_dir))
    for revision in steps:
        with alembic(database) as config:
            command.upgrade(config, revision)
            if revision == "0001":
                seed_first_schema(config.attributes["connection"], key)
            if revision == "0002":
                seed_fine_tuning(config.attributes["connection"])
    (data_dir / "adapters" / JOB / "adapter").mkdir(parents=True)
    database.dispose()
    return steps


def test_every_migration_goes_up_from_the_first_schema_with_data(tmp_path: Path) -> None:
    key = new_key()
    migrated_with_data(tmp_path, key)
    # The last schema, served: the key of the first schema authenticates, its usage and the ft: model are there.
    tenant_key = {"authorization": f"Bearer {key}"}
    with in_process_gateway(tmp_path, model=MODEL) as gateway:
        models = gateway.http.get("/v1/models", headers=tenant_key)
        assert models.status_code == 200, models.text
        assert FT_MODEL in {model["id"] for model in models.json()["data"]}
        totals = gateway.http.get("/admin/v1/usage", params={"tenant": TENANT}, headers=ADMIN).json()["totals"]
        assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (
            len(USAGE),
            sum(prompt for prompt, _ in USAGE),
            sum(completion for _, completion in USAGE),
        )
        job = gateway.http.get(f"/v1/fine_tuning/jobs/{JOB}", headers=tenant_key)
        assert job.status_code == 200 and job.json()["fine_tuned_model"] == FT_MODEL, job.text


def downgrade_one(database: Database) -> list[str]:
    """One migration down; the revision the database is then at (none below the first)."""
    with alembic(database) as config:
        command.downgrade(config, "-1")
        rows = config.attributes["connection"].execute(text("SELECT version_num FROM alembic_version")).all()
    return [row[0] for row in rows]


def test_every_migration_goes_down_with_data_to_no_schema(tmp_path: Path) -> None:
    steps = migrated_with_data(tmp_path, new_key())
    database = Database(sqlite_url(tmp_path))
    for position in reversed(range(len(steps))):
        assert downgrade_one(database) == steps[:position][-1:], steps[position]
    assert set(inspect(database.engine).get_table_names()) == {"alembic_version"}
    database.dispose()


def test_a_downgrade_keeps_the_tenants_keys(tmp_path: Path) -> None:
    steps = migrated_with_data(tmp_path, new_key())
    database = Database(sqlite_url(tmp_path))
    for revision in reversed(steps[1:]):
        downgrade_one(database)
        with database.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM api_keys")).scalar() == 1, f"below {revision}"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1  # enforced again after it
    database.dispose()
