"""The operations guide (``docs/guides/operations.md``) as an operator follows it, its own commands run here: a
gateway backed up and restored into a fresh install on another path (keys, the ledger and an ``ft:`` model work
there), on SQLite and on PostgreSQL (``pg_dump`` and ``pg_restore`` into a new database); the admin key rotated
(the old one refused, tenants' keys untouched); and the Prometheus and Grafana files under ``deploy/`` naming only
metrics a gateway exports. The gateways are real processes on the instant fake engine: nothing here depends on what
a model answers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import MODEL, REPO
from tests.support.databases import fresh_postgres_database
from tests.support.doc_examples import examples
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import admin_client, admin_usage, create_tenant, openai_client, register_adapter

GUIDE = REPO / "docs" / "guides" / "operations.md"
DEPLOY = REPO / "deploy"


def guide_block(containing: str) -> str:
    """The one shell block of the guide that contains ``containing``."""
    found = [example.code for example in examples(GUIDE) if example.lang == "bash" and containing in example.code]
    assert len(found) == 1, f"{containing!r} in {len(found)} blocks of {GUIDE}"
    return found[0]


def run_block(code: str, **env: str) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def chat(client: Any, model: str) -> None:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)


def test_a_backup_restored_into_a_fresh_install_keeps_keys_the_ledger_and_ft_models(tmp_path: Path) -> None:
    old, new, backup = tmp_path / "old" / "data", tmp_path / "new" / "data", tmp_path / "llmaas.tar.gz"
    old.mkdir(parents=True)
    with fake_gateway(old, log=tmp_path / "old.log") as gateway, admin_client(gateway.base) as admin:
        tenant, key = create_tenant(admin, "ops")
        ft_model = register_adapter(old, tenant["id"])
        client = openai_client(gateway.base, key)
        for model in (MODEL, MODEL, ft_model):
            chat(client, model)
        before = admin_usage(admin, tenant["id"], 3)
        assert before["requests"] == 3 and before["completion_tokens"] > 0
    # The gateway is stopped (SIGTERM: drained, the ledger written): back it up as the guide says.
    run_block(guide_block("-czf"), LLMAAS_DATA_DIR=str(old), BACKUP_FILE=str(backup))
    shutil.rmtree(old.parent)  # the old machine is gone
    run_block(guide_block("-xzf"), LLMAAS_DATA_DIR=str(new), BACKUP_FILE=str(backup))

    with fake_gateway(new, log=tmp_path / "new.log") as gateway, admin_client(gateway.base) as admin:
        assert admin_usage(admin, tenant["id"], 3) == before
        client = openai_client(gateway.base, key)
        assert ft_model in {model.id for model in client.models.list()}
        chat(client, ft_model)  # the restored adapter serves
        assert admin_usage(admin, tenant["id"], 4)["requests"] == 4
    assert (new.stat().st_mode & 0o777) == 0o700


def test_a_postgresql_backup_restored_into_a_new_database_keeps_keys_the_ledger_and_ft_models(tmp_path: Path) -> None:
    old, new, backup = tmp_path / "old" / "data", tmp_path / "new" / "data", tmp_path / "llmaas.tar.gz"
    old.mkdir(parents=True)
    with fresh_postgres_database() as old_database, fresh_postgres_database() as new_database:
        with (
            fake_gateway(old, log=tmp_path / "old.log", database_url=old_database) as gateway,
            admin_client(gateway.base) as admin,
        ):
            tenant, key = create_tenant(admin, "ops-pg")
            ft_model = register_adapter(old, tenant["id"], database_url=old_database)
            client = openai_client(gateway.base, key)
            for model in (MODEL, ft_model):
                chat(client, model)
            before = admin_usage(admin, tenant["id"], 2)
            assert before["requests"] == 2 and before["completion_tokens"] > 0
        run_block(guide_block("pg_dump"), LLMAAS_DATABASE_URL=old_database, BACKUP_FILE=str(backup))
        run_block(guide_block("-czf"), LLMAAS_DATA_DIR=str(old), BACKUP_FILE=str(backup))
        shutil.rmtree(old.parent)
        run_block(guide_block("pg_restore"), LLMAAS_DATABASE_URL=new_database, BACKUP_FILE=str(backup))
        run_block(guide_block("-xzf"), LLMAAS_DATA_DIR=str(new), BACKUP_FILE=str(backup))

        with (
            fake_gateway(new, log=tmp_path / "new.log", database_url=new_database) as gateway,
            admin_client(gateway.base) as admin,
        ):
            assert admin_usage(admin, tenant["id"], 2) == before
            client = openai_client(gateway.base, key)
            assert ft_model in {model.id for model in client.models.list()}
            chat(client, ft_model)
            assert admin_usage(admin, tenant["id"], 3)["requests"] == 3


def test_rotating_the_admin_key_as_the_guide_says(tmp_path: Path) -> None:
    data = tmp_path
    gateway = fake_gateway(data, admin_key=None)  # the key generated into <data dir>/admin_key
    with gateway:
        old_key = (data / "admin_key").read_text().strip()
        with admin_client(gateway.base, old_key) as admin:
            _, tenant_key = create_tenant(admin, "rotate")
    run_block(guide_block("admin_key.new"), LLMAAS_DATA_DIR=str(data))
    new_key = (data / "admin_key").read_text().strip()
    assert new_key != old_key and (data / "admin_key").stat().st_mode & 0o777 == 0o600
    with gateway:
        for key, status in ((old_key, 401), (new_key, 200)):
            with admin_client(gateway.base, key) as admin:
                assert admin.get("/admin/v1/tenants").status_code == status
                assert admin.get("/metrics").status_code == status
        assert openai_client(gateway.base, tenant_key).models.list().data


def metric_names(text: str) -> set[str]:
    """Every ``llmaas_`` metric a PromQL text or a config names."""
    return set(re.findall(r"\bllmaas_[a-z0-9_]+\b", text))


def test_the_prometheus_and_grafana_files_name_only_metrics_a_gateway_exports(tmp_path: Path) -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["credentials_file"]
    assert scrape["rule_files"] == ["alerts.yml"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert all({"alert", "expr", "labels"} <= set(rule) and rule["labels"]["severity"] for rule in rules)
    dashboard = json.loads((DEPLOY / "grafana" / "llmaas.json").read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] and dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids)) >= 8
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions += [rule["expr"] for rule in rules]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"]]
    named = set().union(*(metric_names(expression) for expression in expressions))

    token = "metrics-token-0123456789"
    with fake_gateway(tmp_path, metrics_token=token) as gateway, admin_client(gateway.base) as admin:
        _, key = create_tenant(admin)
        chat(openai_client(gateway.base, key), MODEL)  # so that the labelled series exist
        scraped = httpx.get(f"{gateway.base}/metrics", headers={"authorization": f"Bearer {token}"})
    assert scraped.status_code == 200
    exported = {sample.name for family in text_string_to_metric_families(scraped.text) for sample in family.samples}
    assert len(named) >= 10
    assert not named - exported, f"not exported by the gateway: {sorted(named - exported)}"
