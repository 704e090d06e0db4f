"""Deleted means deleted, through the real gateway process (the instant fake engine, SQLite in its data dir):
a tenant uploads a file, runs an eval and makes a request; the operator exports its data, deletes it, and finds
its bytes gone from disk and its rows gone from the database while its usage stays; the audit log tells who did
it (API, CLI, console page) and cannot be changed through the API; the data dir is private."""

from __future__ import annotations

import io
import json
import sqlite3
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import ADMIN_KEY, MODEL
from tests.support.console import console
from tests.support.evals import CRITERIA, ITEM_SCHEMA, ITEMS, completions_source, finished
from tests.support.gateway_process import fake_gateway, gateway_env, llmaas
from tests.support.tenants import admin_client, create_tenant, openai_client

TRAINING = b'{"messages": [{"role": "user", "content": "secret"}, {"role": "assistant", "content": "ok"}]}\n'


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deletion") / "data"


@pytest.fixture(scope="module")
def gateway(data_dir: Path) -> Iterator[str]:
    data_dir.mkdir(mode=0o755)  # a careless operator's data dir: made private at start
    with fake_gateway(data_dir, log=data_dir.parent / "gateway.log") as running:
        yield running.base


@pytest.fixture(scope="module")
def admin(gateway: str) -> Iterator[httpx.Client]:
    with admin_client(gateway, timeout=30) as client:
        yield client


def rows(data_dir: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "llmaas.db") as conn:
        return list(conn.execute(query, args))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return llmaas(gateway_env(data_dir, admin_key=None), *args)


def test_a_deleted_tenants_content_is_gone_and_its_usage_stays(
    gateway: str, admin: httpx.Client, data_dir: Path
) -> None:
    tenant, key = create_tenant(admin, "doomed")
    client = openai_client(gateway, key)
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    stored = data_dir / "files" / uploaded.id
    assert stored.read_bytes() == TRAINING
    created = client.evals.create(
        name="e",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=CRITERIA,  # type: ignore[arg-type]
    )
    content = [{"item": item} for item in ITEMS]
    run = client.evals.runs.create(
        created.id, data_source=completions_source({"type": "file_content", "content": content})
    )
    assert finished(client, created.id, run.id).status == "completed"
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    tenant_id = tenant["id"]
    deadline = time.monotonic() + 10
    while not rows(data_dir, "SELECT 1 FROM usage_records WHERE tenant_id = ? AND kind = 'inference'", tenant_id):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Private: the data dir, the database and its WAL, the upload.
    for directory in (data_dir, data_dir / "files", data_dir / "adapters", data_dir / "ledger"):
        assert mode(directory) == 0o700, directory
    for path in (data_dir / "llmaas.db", data_dir / "llmaas.db-wal", stored):
        assert mode(path) == 0o600, path

    exported = admin.get(f"/admin/v1/tenants/{tenant['name']}/export")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(exported.content), mode="r:gz") as archive:
        assert archive.extractfile(f"files/{uploaded.id}").read() == TRAINING  # type: ignore[union-attr]
        items = archive.extractfile("evals/items.jsonl").read().splitlines()  # type: ignore[union-attr]
        assert len(items) == len(ITEMS)

    deleted = admin.delete(f"/admin/v1/tenants/{tenant_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["removed"]["files"] == 1 and deleted.json()["removed"]["evals"] == 1
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert not stored.exists()
    for table in (
        "tenants",
        "api_keys",
        "files",
        "evals",
        "eval_runs",
        "fine_tuning_jobs",
        "adapters",
        "console_sessions",
    ):
        column = "id" if table == "tenants" else "tenant_id"
        assert rows(data_dir, f"SELECT count(*) FROM {table} WHERE {column} = ?", tenant_id) == [(0,)], table
    assert rows(data_dir, "SELECT count(*) FROM eval_run_items WHERE run_id = ?", run.id) == [(0,)]
    kinds = {kind for (kind,) in rows(data_dir, "SELECT kind FROM usage_records WHERE tenant_id = ?", tenant_id)}
    assert kinds == {"inference", "eval"}  # the accounting stays
    assert rows(data_dir, "SELECT count(*) FROM usage_daily WHERE tenant_id = ?", tenant_id)[0][0] > 0

    log = admin.get("/admin/v1/audit", params={"tenant": tenant_id}).json()["data"]
    assert [e["action"] for e in log] == ["tenant.delete", "tenant.export", "key.create", "tenant.create"]
    assert all(e["actor"] == "operator" and e["client_address"] == "127.0.0.1" and e["request_id"] for e in log)
    assert deleted.headers["x-request-id"] == log[0]["request_id"]


def test_a_tenants_deletes_are_audited_with_its_key(gateway: str, admin: httpx.Client) -> None:
    tenant, key = create_tenant(admin, "tidy")
    client = openai_client(gateway, key)
    uploaded = client.files.create(file=("a.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    client.files.delete(uploaded.id)
    created = client.evals.create(
        name="e",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=CRITERIA,  # type: ignore[arg-type]
    )
    content = [{"item": item} for item in ITEMS]
    run = client.evals.runs.create(
        created.id, data_source=completions_source({"type": "file_content", "content": content})
    )
    finished(client, created.id, run.id)
    client.evals.runs.delete(run.id, eval_id=created.id)
    client.evals.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.models.delete("ft:nope")
    key_id = admin.get(f"/admin/v1/tenants/{tenant['id']}/keys").json()["data"][0]["id"]
    log = admin.get("/admin/v1/audit", params={"actor": key_id}).json()["data"]
    assert [(e["action"], e["target_id"]) for e in log] == [
        ("eval.delete", created.id),
        ("eval_run.delete", run.id),
        ("file.delete", uploaded.id),
    ]
    assert all(e["actor_tenant_id"] == tenant["id"] for e in log)


def test_the_audit_log_cannot_be_changed_or_read_by_a_tenant(gateway: str, admin: httpx.Client) -> None:
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        assert admin.request(method, "/admin/v1/audit").status_code == 405, method
    _, key = create_tenant(admin, "curious")
    assert httpx.get(f"{gateway}/admin/v1/audit", headers={"authorization": f"Bearer {key}"}).status_code == 403
    assert admin.get("/admin/v1/audit", params={"limit": 0}).status_code == 400
    page = admin.get("/admin/v1/audit", params={"limit": 1}).json()
    older = admin.get("/admin/v1/audit", params={"limit": 1, "after": page["last_id"]}).json()
    assert older["data"][0]["id"] < page["data"][0]["id"]


def test_the_operator_reads_the_audit_log_in_the_console(gateway: str, admin: httpx.Client) -> None:
    tenant, _ = create_tenant(admin, "watched")
    admin.post(f"/admin/v1/tenants/{tenant['id']}/suspend")
    with closing(console(gateway, ADMIN_KEY, **{"sec-fetch-site": "same-origin"})) as browser:
        page = browser.get("/console/admin/audit", params={"tenant": tenant["name"]})
        assert page.status_code == 200
        assert "tenant.suspend" in page.text and "tenant.create" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert 'href="/console/admin/audit"' in browser.get("/console/admin/tenants").text
    _, key = create_tenant(admin, "nosy")
    with closing(console(gateway, key, **{"sec-fetch-site": "same-origin"})) as browser:
        assert browser.get("/console/admin/audit").status_code == 403


def test_the_cli_exports_deletes_and_reads_the_audit_log(gateway: str, admin: httpx.Client, data_dir: Path) -> None:
    tenant, key = create_tenant(admin, "by-cli")
    client = openai_client(gateway, key)
    uploaded = client.files.create(file=("a.jsonl", io.BytesIO(TRAINING)), purpose="fine-tune")
    archive = data_dir.parent / "by-cli.tar.gz"
    archive.write_bytes(b"an older file, readable by all")
    archive.chmod(0o644)
    done = cli(data_dir, "tenants", "export", tenant["name"], "-o", str(archive))
    assert done.returncode == 0, done.stderr
    assert mode(archive) == 0o600
    with tarfile.open(archive, mode="r:gz") as opened:
        assert opened.extractfile(f"files/{uploaded.id}").read() == TRAINING  # type: ignore[union-attr]
    done = cli(data_dir, "tenants", "delete", tenant["name"])
    assert done.returncode == 0, done.stderr
    assert not (data_dir / "files" / uploaded.id).exists()
    done = cli(data_dir, "audit", "--tenant", tenant["id"])
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["data"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("tenant.delete", "system"),
        ("tenant.export", "system"),
        ("key.create", "operator"),
        ("tenant.create", "operator"),
    ]
