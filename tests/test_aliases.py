"""Tenant model aliases: created, moved, split, rolled back and deleted through the tenant's API and the operator's;
what a setting may be (targets the tenant can call, weights, names, bounds); a split's shares over many requests;
a move seen by a second gateway on the same database within seconds; the answer and the ledger naming the concrete
model (on the real model too, chat and embeddings); ``allowed_models``; the eval gate; isolation between tenants;
erasure and export with the tenant. The fake engine serves where the answers' text is beside the point."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser
from sqlalchemy import create_engine, delete, select, text

from adapters.store import Adapter
from gateway.aliases.service import AliasService
from gateway.bootstrap import open_database
from gateway.db import Database, EvalRun, ModelAliasVersion
from gateway.inference import aliases as alias_cache
from gateway.settings import GatewaySettings
from gateway.tenancy.models import KeyCreate, TenantCreate
from tests.support import ADMIN, ADMIN_KEY, MODEL
from tests.support.console import signed_in
from tests.support.databases import fresh_postgres_database
from tests.support.evals import ITEMS, completions_source, finished, make_eval
from tests.support.gateway_process import GatewayProcess, fake_gateway
from tests.support.in_process import InProcessGateway
from tests.support.tenants import admin_client, create_tenant, openai_client, register_adapter, tenant_key

CHAT = [{"role": "user", "content": "hi"}]


def _tenant(gateway: InProcessGateway, **key: Any) -> tuple[str, str, str]:
    """A new tenant: its id and name, and a key of it (``key``: the key's fields)."""
    tenancy = gateway.state.tenancy
    created = tenancy.create_tenant(TenantCreate(name=f"t-{uuid.uuid4().hex[:8]}"))
    return created.id, created.name, tenancy.create_key(created.id, KeyCreate(**key)).key


def _key(gateway: InProcessGateway, tenant_id: str, **fields: Any) -> str:
    return gateway.state.tenancy.create_key(tenant_id, KeyCreate(**fields)).key


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class _Api:
    """The in-process app's HTTP client acting with one bearer token."""

    def __init__(self, gateway: InProcessGateway, headers: dict[str, str]) -> None:
        self._http = gateway.http
        self._headers = headers

    def get(self, path: str) -> httpx.Response:
        return self._http.get(path, headers=self._headers)

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return self._http.post(path, json=json, headers=self._headers)

    def delete(self, path: str) -> httpx.Response:
        return self._http.delete(path, headers=self._headers)


def _chat_model(gateway: InProcessGateway, key: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": CHAT, "max_tokens": 2}
    return gateway.http.post("/v1/chat/completions", json=body, headers=_bearer(key))


def _answered_by(gateway: InProcessGateway, key: str, model: str) -> str:
    response = _chat_model(gateway, key, model)
    assert response.status_code == 200, response.text
    answered: str = response.json()["model"]
    return answered


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def _usage_models(database_url: str, tenant_id: str, count: int) -> Counter[str]:
    """The models of the tenant's ledger rows, once ``count`` are written."""
    engine = create_engine(database_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                query = text("SELECT model FROM usage_records WHERE tenant_id = :t")
                models = Counter(row[0] for row in conn.execute(query, {"t": tenant_id}))
            if sum(models.values()) >= count or time.monotonic() > deadline:
                return models
            time.sleep(0.2)
    finally:
        engine.dispose()


@pytest.fixture
def gateway(in_process: Callable[..., InProcessGateway]) -> InProcessGateway:
    return in_process(model=MODEL)


def test_create_move_split_roll_back_and_delete_through_the_tenant_api(
    gateway: InProcessGateway, tmp_path: Path
) -> None:
    tenant_id, _, key = _tenant(gateway, key_manager=True)
    first, second = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    api = _Api(gateway, _bearer(key))

    created = api.post("/v1/aliases", json={"name": "prod", "model": first})
    assert created.status_code == 201, created.text
    alias = created.json()
    assert (alias["object"], alias["name"], alias["version"], alias["gate"]) == ("model.alias", "prod", 1, None)
    assert alias["targets"] == [{"model": first, "weight": 100}]
    assert _answered_by(gateway, key, "prod") == first

    # /v1/models lists the alias with its targets (our extension field); plain models carry no such field.
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=gateway.http, max_retries=0)
    cards = {model.id: model for model in client.models.list().data}
    assert cards["prod"].owned_by == tenant_id and cards["prod"].targets == [{"model": first, "weight": 100}]  # type: ignore[attr-defined]
    assert "targets" not in cards[MODEL].model_dump()
    assert client.models.retrieve("prod").targets == [{"model": first, "weight": 100}]  # type: ignore[attr-defined]

    # One call moves it, in force at once on this gateway.
    moved = api.post("/v1/aliases/prod", json={"model": second})
    assert (moved.status_code, moved.json()["version"]) == (200, 2), moved.text
    assert _answered_by(gateway, key, "prod") == second

    # A canary: 90 % first, 10 % second, drawn per request.
    split = [{"model": first, "weight": 90}, {"model": second, "weight": 10}]
    assert api.post("/v1/aliases/prod", json={"targets": split}).json()["targets"] == split
    answered = Counter(_answered_by(gateway, key, "prod") for _ in range(300))
    assert set(answered) == {first, second}
    assert 12 <= answered[second] <= 54, answered  # 30 expected; 4.5 standard deviations either way

    # Every ledger row names the model that answered, never the alias.
    ledger = _usage_models(f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id, 302)
    assert ledger == Counter({first: answered[first] + 1, second: answered[second] + 1})

    # Rollback walks back through the versions, to the creation and no further.
    assert api.post("/v1/aliases/prod/rollback").json()["targets"] == [{"model": second, "weight": 100}]
    assert _answered_by(gateway, key, "prod") == second
    assert api.post("/v1/aliases/prod/rollback").json()["targets"] == [{"model": first, "weight": 100}]
    assert _answered_by(gateway, key, "prod") == first
    error = _error(api.post("/v1/aliases/prod/rollback"), 409)
    assert error["code"] == "nothing_to_roll_back"
    history = api.get("/v1/aliases/prod/history").json()["data"]
    assert [(v["version"], v["action"]) for v in history] == [
        (5, "rollback"),
        (4, "rollback"),
        (3, "move"),
        (2, "move"),
        (1, "create"),
    ]
    assert {v["actor"] for v in history} == {gateway.state.tenancy.list_keys(tenant_id)[0].id}
    assert api.get("/v1/aliases").json()["data"][0]["version"] == 5
    assert api.get("/v1/aliases/prod").json()["targets"] == [{"model": first, "weight": 100}]

    # A model an alias points at cannot be deleted: every client of the alias would break.
    in_use = _error(api.delete(f"/v1/models/{first}"), 409)
    assert (in_use["code"], in_use["param"]) == ("model_in_use", "model") and "prod" in in_use["message"]
    assert _answered_by(gateway, key, first) == first

    deleted = api.delete("/v1/aliases/prod")
    assert deleted.json() == {"id": alias["id"], "object": "model.alias", "name": "prod", "deleted": True}
    assert _error(_chat_model(gateway, key, "prod"), 404)["code"] == "model_not_found"
    assert _error(api.get("/v1/aliases/prod"), 404)["code"] == "alias_not_found"
    assert "prod" not in {model.id for model in client.models.list().data}
    assert client.models.delete(first).deleted is True  # no alias points at it any more


def test_what_an_alias_may_be(gateway: InProcessGateway, tmp_path: Path) -> None:
    tenant_id, _, key = _tenant(gateway, key_manager=True)
    other_id, _, _ = _tenant(gateway)
    own, foreign = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, other_id)
    api = _Api(gateway, _bearer(key))

    def refused(body: dict[str, Any], status: int = 400) -> dict[str, Any]:
        return _error(api.post("/v1/aliases", json={"name": "a", **body}), status)

    # Targets: models the tenant can call by their own names, now.
    assert refused({"model": "ft:nope:t:x:y"})["code"] == "model_not_found"
    error = refused({"model": foreign})  # another tenant's model is as absent as a missing one
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    error = refused({"targets": [{"model": own, "weight": 50}, {"model": foreign, "weight": 50}]})
    assert (error["code"], error["param"]) == ("model_not_found", "targets[1].model")
    # The weights and the shape of a split.
    assert (
        "sum to 100" in refused({"targets": [{"model": own, "weight": 50}, {"model": MODEL, "weight": 40}]})["message"]
    )
    assert refused({"targets": [{"model": own, "weight": 0}, {"model": MODEL, "weight": 100}]})["param"].startswith(
        "targets"
    )
    three = [
        {"model": m, "weight": w} for m, w in ((own, 40), (MODEL, 40), (register_adapter(tmp_path, tenant_id), 20))
    ]
    assert refused({"targets": three})["param"] == "targets"
    assert (
        "different models"
        in refused({"targets": [{"model": own, "weight": 50}, {"model": own, "weight": 50}]})["message"]
    )
    assert "either model or targets" in refused({"model": own, "targets": [{"model": own}]})["message"]
    assert "either model or targets" in refused({})["message"]
    assert refused({"model": own, "surprise": 1})["code"] == "unknown_parameter"
    # Names: never a served model's, never an ft: name, bounded, in one charset, one per tenant.
    for name in ("ft:mine", "a/b", "-lead", "", "x" * 65, "sp ace", "é"):
        assert _error(api.post("/v1/aliases", json={"name": name, "model": own}), 400)["param"] == "name", name
    assert _error(api.post("/v1/aliases", json={"name": MODEL, "model": own}), 400)["code"] == "alias_name_taken"
    assert api.post("/v1/aliases", json={"name": "x" * 64, "model": own}).status_code == 201
    assert api.post("/v1/aliases", json={"name": "prod", "model": own}).status_code == 201
    duplicate = api.post("/v1/aliases", json={"name": "prod", "model": MODEL})
    assert (_error(duplicate, 409)["param"], duplicate.headers["x-should-retry"]) == ("name", "false")
    # An alias never points at an alias (no chains).
    assert refused({"model": "prod"})["code"] == "model_not_found"
    # A move is checked as a creation is; a missing alias is a 404.
    assert _error(api.post("/v1/aliases/prod", json={"model": foreign}), 400)["code"] == "model_not_found"
    assert _error(api.post("/v1/aliases/nope", json={"model": own}), 404)["code"] == "alias_not_found"
    assert _error(api.post("/v1/aliases/nope/rollback"), 404)["code"] == "alias_not_found"
    assert _error(api.delete("/v1/aliases/nope"), 404)["code"] == "alias_not_found"
    assert _error(api.get("/v1/aliases/" + "x" * 65), 400)["param"] == "name"
    # At most ALIASES_PER_TENANT (100) per tenant.
    for index in range(98):
        assert api.post("/v1/aliases", json={"name": f"n{index}", "model": MODEL}).status_code == 201
    assert refused({"name": "one-more", "model": MODEL})["code"] == "too_many_aliases"
    # Only a key manager changes aliases; any key of the tenant reads them.
    plain = _Api(gateway, _bearer(_key(gateway, tenant_id)))
    assert _error(plain.post("/v1/aliases/prod", json={"model": MODEL}), 403)["code"] == "key_manager_required"
    assert _error(plain.delete("/v1/aliases/prod"), 403)["code"] == "key_manager_required"
    assert plain.get("/v1/aliases/prod").json()["targets"] == [{"model": own, "weight": 100}]


def test_the_operator_manages_a_tenants_aliases_and_no_other_tenant_sees_them(
    gateway: InProcessGateway, tmp_path: Path
) -> None:
    tenant_id, name, key = _tenant(gateway)
    other_id, _, other_key = _tenant(gateway, key_manager=True)
    model = register_adapter(tmp_path, tenant_id)
    admin = _Api(gateway, ADMIN)
    base = f"/admin/v1/tenants/{name}/aliases"

    assert admin.post(base, json={"name": "prod", "model": MODEL}).status_code == 201
    assert admin.post(f"{base}/prod", json={"model": model}).json()["version"] == 2
    assert [v["actor"] for v in admin.get(f"{base}/prod/history").json()["data"]] == ["operator", "operator"]
    assert admin.get(f"/admin/v1/tenants/{tenant_id}/aliases").json()["data"][0]["targets"][0]["model"] == model
    assert _answered_by(gateway, key, "prod") == model
    assert admin.post(f"{base}/prod/rollback").json()["targets"][0]["model"] == MODEL
    assert _error(admin.get("/admin/v1/tenants/nobody/aliases"), 404)["param"] == "tenant"
    # A tenant's key cannot use the operator's routes.
    assert _error(_Api(gateway, _bearer(key)).post(base, {"name": "x", "model": MODEL}), 403)

    # The other tenant: no such alias to see, use or resolve, and a name of its own to take.
    other = _Api(gateway, _bearer(other_key))
    assert _error(other.get("/v1/aliases/prod"), 404)["code"] == "alias_not_found"
    assert _error(other.post("/v1/aliases/prod", json={"model": MODEL}), 404)["code"] == "alias_not_found"
    assert _error(other.post("/v1/aliases/prod/rollback"), 404)["code"] == "alias_not_found"
    assert _error(other.delete("/v1/aliases/prod"), 404)["code"] == "alias_not_found"
    assert other.get("/v1/aliases").json()["data"] == []
    assert _error(_chat_model(gateway, other_key, "prod"), 404)["code"] == "model_not_found"
    assert _error(other.get("/v1/models/prod"), 404)["code"] == "model_not_found"
    assert "prod" not in {m["id"] for m in other.get("/v1/models").json()["data"]}
    assert other.post("/v1/aliases", json={"name": "prod", "model": MODEL}).status_code == 201
    assert _answered_by(gateway, other_key, "prod") == MODEL
    assert _answered_by(gateway, key, "prod") == MODEL  # the first tenant's alias, rolled back above
    assert admin.delete(f"{base}/prod").json()["deleted"] is True
    assert _answered_by(gateway, other_key, "prod") == MODEL  # the other's own alias stays
    assert _error(_chat_model(gateway, key, "prod"), 404)["code"] == "model_not_found"
    assert other_id != tenant_id


def test_allowed_models_admit_the_alias_or_all_of_its_targets(gateway: InProcessGateway, tmp_path: Path) -> None:
    tenant_id, name, _ = _tenant(gateway)
    first, second = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    admin = _Api(gateway, ADMIN)
    split = [{"model": first, "weight": 50}, {"model": second, "weight": 50}]
    assert admin.post(f"/admin/v1/tenants/{name}/aliases", json={"name": "prod", "targets": split}).status_code == 201

    by_alias = _key(gateway, tenant_id, allowed_models=["prod"])
    by_targets = _key(gateway, tenant_id, allowed_models=[first, second])
    by_one_target = _key(gateway, tenant_id, allowed_models=[first])
    assert _answered_by(gateway, by_alias, "prod") in {first, second}
    assert _answered_by(gateway, by_targets, "prod") in {first, second}
    # A split could pick a model this key may not use: refused, every time (not by the draw).
    for _ in range(5):
        assert _error(_chat_model(gateway, by_one_target, "prod"), 403)["code"] == "model_not_allowed"
    # The alias's name admits the alias, not its targets by their own names.
    assert _error(_chat_model(gateway, by_alias, first), 403)["code"] == "model_not_allowed"

    def models(key: str) -> set[str]:
        listed = gateway.http.get("/v1/models", headers=_bearer(key)).json()["data"]
        return {model["id"] for model in listed}

    assert models(by_alias) == {"prod"}
    assert models(by_targets) == {first, second, "prod"}
    assert models(by_one_target) == {first}
    assert gateway.http.get("/v1/models/prod", headers=_bearer(by_alias)).json()["targets"] == split
    assert _error(gateway.http.get("/v1/models/prod", headers=_bearer(by_one_target)), 403)["param"] == "model"
    assert _error(gateway.http.get("/v1/aliases/prod", headers=_bearer(by_one_target)), 404)

    # A key manager restricted to some models manages only aliases it names, pointed at models it may use.
    manager = _key(gateway, tenant_id, key_manager=True, allowed_models=["prod", first])
    move = gateway.http.post("/v1/aliases/prod", json={"model": second}, headers=_bearer(manager))
    assert (_error(move, 403)["param"], _error(move, 403)["code"]) == ("model", "model_not_allowed")
    moved = gateway.http.post("/v1/aliases/prod", json={"model": first}, headers=_bearer(manager))
    assert moved.status_code == 200, moved.text
    create = gateway.http.post("/v1/aliases", json={"name": "staging", "model": first}, headers=_bearer(manager))
    assert _error(create, 403)["param"] == "name"


def _scored_run(client: openai.OpenAI, eval_id: str, model: str, passing: int, failing: int) -> None:
    """A run of the eval on ``model`` through the runner, completed: ``passing`` items pass, ``failing`` fail."""
    content = [{"item": ITEMS[0]}] * passing + [{"item": ITEMS[2]}] * failing
    source = {**completions_source({"type": "file_content", "content": content}), "model": model}
    run = client.evals.runs.create(eval_id, data_source=source)  # type: ignore[arg-type]
    done = finished(client, eval_id, run.id)
    assert (done.status, done.result_counts.passed, done.result_counts.total) == (
        "completed",
        passing,
        passing + failing,
    )


def test_a_gated_promotion_needs_the_targets_latest_completed_run_to_score(
    gateway: InProcessGateway, tmp_path: Path
) -> None:
    tenant_id, _, key = _tenant(gateway, key_manager=True)
    _, _, other_key = _tenant(gateway)
    stable, candidate = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    api = _Api(gateway, _bearer(key))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=gateway.http, max_retries=0)
    eval_id = make_eval(client).id
    assert api.post("/v1/aliases", json={"name": "prod", "model": stable}).status_code == 201
    gate = {"eval_id": eval_id, "min_score": 0.9}

    none_yet = api.post("/v1/aliases/prod", json={"model": candidate, "gate": gate})
    assert "no completed run" in _error(none_yet, 409)["message"] and none_yet.headers["x-should-retry"] == "false"
    _scored_run(client, eval_id, candidate, 4, 1)
    _scored_run(client, eval_id, stable, 5, 0)  # another model's run says nothing of this one
    low = _error(api.post("/v1/aliases/prod", json={"model": candidate, "gate": gate}), 409)
    assert (low["code"], low["param"]) == ("alias_gate_failed", "gate")
    assert "scored 0.8 (4/5 passed), below min_score 0.9" in low["message"], low["message"]
    assert api.get("/v1/aliases/prod").json()["version"] == 1  # nothing moved
    assert _answered_by(gateway, key, "prod") == stable
    # The SDK sees a ConflictError, and does not retry it.
    with pytest.raises(openai.ConflictError):
        client.post("/aliases/prod", body={"model": candidate, "gate": gate}, cast_to=object)

    _scored_run(client, eval_id, candidate, 5, 0)  # its latest completed run: 1.0
    promoted = api.post("/v1/aliases/prod", json={"model": candidate, "gate": gate})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["gate"] == gate  # kept for later moves
    assert _answered_by(gateway, key, "prod") == candidate

    # The kept gate holds every later move, for every target of a split, on the target's latest completed run.
    _scored_run(client, eval_id, stable, 1, 4)
    split = [{"model": stable, "weight": 10}, {"model": candidate, "weight": 90}]
    refused = _error(api.post("/v1/aliases/prod", json={"targets": split}), 409)["message"]
    assert f"refuses '{stable}'" in refused and "scored 0.2 (1/5 passed)" in refused
    # A rollback is the way back: never gated.
    assert api.post("/v1/aliases/prod/rollback").json()["targets"][0]["model"] == stable
    # The gate dropped (null) on a move: that move passes.
    assert api.post("/v1/aliases/prod", json={"targets": split, "gate": None}).json()["gate"] is None
    # An eval of another tenant's, or none, is a 404 naming it; a score outside [0, 1] a 400.
    theirs = openai.OpenAI(base_url="http://testserver/v1", api_key=other_key, http_client=gateway.http, max_retries=0)
    for missing in (make_eval(theirs).id, "eval_nope"):
        wrong = api.post("/v1/aliases/prod", json={"model": candidate, "gate": {"eval_id": missing, "min_score": 0.5}})
        assert _error(wrong, 404)["param"] == "gate.eval_id"
    too_high = api.post("/v1/aliases/prod", json={"model": candidate, "gate": {"eval_id": eval_id, "min_score": 2}})
    assert _error(too_high, 400)["param"].startswith("gate")


def test_a_tenants_aliases_are_exported_and_erased_with_it(gateway: InProcessGateway, tmp_path: Path) -> None:
    tenant_id, name, _ = _tenant(gateway)
    admin = _Api(gateway, ADMIN)
    assert admin.post(f"/admin/v1/tenants/{name}/aliases", json={"name": "prod", "model": MODEL}).status_code == 201
    assert admin.post(f"/admin/v1/tenants/{name}/aliases/prod", json={"model": MODEL}).status_code == 200

    export = admin.get(f"/admin/v1/tenants/{name}/export")
    assert export.status_code == 200, export.text
    with tarfile.open(fileobj=io.BytesIO(export.content), mode="r:gz") as archive:

        def rows(member: str) -> list[dict[str, Any]]:
            data = archive.extractfile(member)
            assert data is not None
            return [json.loads(line) for line in data.read().splitlines()]

        aliases, versions = rows("aliases/aliases.jsonl"), rows("aliases/versions.jsonl")
    assert [(a["name"], a["version"], a["tenant_id"]) for a in aliases] == [("prod", 2, tenant_id)]
    assert [(v["version"], v["action"]) for v in versions] == [(1, "create"), (2, "move")]

    erased = admin.delete(f"/admin/v1/tenants/{name}")
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["aliases"] == 1
    engine = create_engine(f"sqlite:///{tmp_path / 'llmaas.db'}")
    try:
        with engine.connect() as conn:
            for table in ("model_aliases", "model_alias_versions"):
                query = text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t")
                assert conn.execute(query, {"t": tenant_id}).scalar() == 0
    finally:
        engine.dispose()


@dataclass
class Pair:
    """Two gateway processes on one PostgreSQL (and one data dir, where adapters are stored)."""

    data_dir: Path
    database_url: str
    first: GatewayProcess
    second: GatewayProcess

    def adapter(self, tenant_id: str) -> str:
        """A fine-tuned model of the tenant, registered in the pair's database."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LLMAAS_DATABASE_URL", self.database_url)
            return register_adapter(self.data_dir, tenant_id)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    data_dir = tmp_path_factory.mktemp("aliases-pair")
    with (
        fresh_postgres_database("llmaas_aliases") as url,
        fake_gateway(data_dir, log=data_dir / "a.log", database_url=url) as first,
        fake_gateway(data_dir, log=data_dir / "b.log", database_url=url) as second,
    ):
        yield Pair(data_dir, url, first, second)


def test_a_move_holds_on_a_second_gateway_within_seconds(pair: Pair) -> None:
    """A move made through one gateway is in force on the other within its alias cache's TTL (2 s by default),
    with no restart and no call to it."""
    tenant_id, key = tenant_key(pair.first.base)
    old, new = pair.adapter(tenant_id), pair.adapter(tenant_id)
    second = openai_client(pair.second.base, key)

    def answered() -> str:
        return second.chat.completions.create(model="prod", messages=CHAT, max_tokens=2).model  # type: ignore[arg-type]

    with admin_client(pair.first.base) as admin:
        base = f"/admin/v1/tenants/{tenant_id}/aliases"
        assert admin.post(base, json={"name": "prod", "model": old}).status_code == 201
        assert answered() == old  # read by the second gateway now: cached there from here on
        assert admin.post(f"{base}/prod", json={"model": new}).status_code == 200
        moved_at = time.monotonic()
        while answered() != new:
            assert time.monotonic() - moved_at < 10, "the second gateway never saw the move"
            time.sleep(0.05)
        seen_after = time.monotonic() - moved_at
        assert seen_after < 2 + 2, seen_after  # the TTL, and slack for a loaded machine
        assert {answered() for _ in range(5)} == {new}
        assert admin.post(f"{base}/prod/rollback").status_code == 200
        rolled_at = time.monotonic()
        while answered() != old:
            assert time.monotonic() - rolled_at < 10, "the second gateway never saw the rollback"
            time.sleep(0.05)


def test_the_console_shows_aliases_their_targets_and_history(pair: Pair, browser: Browser) -> None:
    tenant_id, key = tenant_key(pair.first.base)
    model = pair.adapter(tenant_id)
    with admin_client(pair.first.base) as admin:
        base = f"/admin/v1/tenants/{tenant_id}/aliases"
        assert admin.post(base, json={"name": "prod", "model": MODEL}).status_code == 201
        split = [{"model": MODEL, "weight": 80}, {"model": model, "weight": 20}]
        assert admin.post(f"{base}/prod", json={"targets": split}).status_code == 200

    page = signed_in(browser, pair.second.base, key)
    page.goto(f"{pair.second.base}/console/aliases")
    page.wait_for_selector("body[data-history-shown='prod']")
    row = page.locator("#aliases tr[data-alias='prod']").inner_text()
    assert f"{MODEL} 80 %" in row and f"{model} 20 %" in row
    history = page.locator("#history tbody").inner_text()
    assert "move" in history and "create" in history and "operator" in history
    page.close()

    page = signed_in(browser, pair.second.base, ADMIN_KEY)
    page.goto(f"{pair.second.base}/console/admin/aliases")
    page.select_option("#alias-tenant", tenant_id)
    page.locator("#aliases tr[data-alias='prod']", has_text=f"{model} 20 %").wait_for()  # this tenant's, not another's
    page.close()


def test_the_real_model_answers_an_alias_and_the_ledger_names_the_concrete_model(
    server: str, admin: httpx.Client
) -> None:
    tenant, key = create_tenant(admin, "aliases", key={"key_manager": True})
    client = openai_client(server, key)
    aliases = f"/admin/v1/tenants/{tenant['id']}/aliases"
    assert admin.post(aliases, json={"name": "assistant", "model": MODEL}).status_code == 201
    embedder = "all-minilm-l6-v2"
    assert admin.post(aliases, json={"name": "vectors", "model": embedder}).status_code == 201
    mixed = admin.post(
        aliases, json={"name": "mixed", "targets": [{"model": MODEL, "weight": 50}, {"model": embedder, "weight": 50}]}
    )
    assert mixed.status_code == 400 and "all generate text or all create embeddings" in mixed.json()["error"]["message"]

    question = [{"role": "user", "content": "What is the capital of France?"}]
    by_alias = client.chat.completions.create(model="assistant", messages=question, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    by_name = client.chat.completions.create(model=MODEL, messages=question, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert by_alias.model == MODEL
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    chunks = list(
        client.chat.completions.create(model="assistant", messages=question, max_tokens=4, stream=True)  # type: ignore[arg-type]
    )
    assert {chunk.model for chunk in chunks} == {MODEL}
    completion = client.completions.create(model="assistant", prompt="The capital of France is", max_tokens=2)
    assert completion.model == MODEL
    vectors = client.embeddings.create(model="vectors", input="hello")
    direct = client.embeddings.create(model=embedder, input="hello")
    assert vectors.model == embedder and vectors.data[0].embedding == direct.data[0].embedding
    response = client.responses.create(model="assistant", input="Hi", max_output_tokens=16)
    assert response.model == MODEL
    with pytest.raises(openai.BadRequestError):  # the alias does what its target does
        client.embeddings.create(model="assistant", input="hello")

    # The ledger: every request under the concrete model's name, none under an alias's.
    deadline = time.monotonic() + 30
    while True:
        usage = client.get("/usage", cast_to=object, options={"params": {"group_by": "model"}})
        models = {row["model"]: row["requests"] for row in usage["data"]}  # type: ignore[index]
        if sum(models.values()) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert models == {MODEL: 5, embedder: 2}, models


def test_a_batch_naming_an_alias_is_answered_by_its_targets(gateway: InProcessGateway, tmp_path: Path) -> None:
    tenant_id, name, key = _tenant(gateway)
    first, second = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    split = [{"model": first, "weight": 50}, {"model": second, "weight": 50}]
    admin = _Api(gateway, ADMIN)
    assert admin.post(f"/admin/v1/tenants/{name}/aliases", json={"name": "prod", "targets": split}).status_code == 201
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=gateway.http, max_retries=0)
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "prod", "messages": CHAT, "max_tokens": 2},
        }
        for i in range(20)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("batch.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    assert batch.status == "completed" and batch.output_file_id is not None, batch
    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    answered = Counter(line["response"]["body"]["model"] for line in output)
    assert set(answered) == {first, second} and sum(answered.values()) == 20  # both, per request (2 in 10^6 to fail)
    ledger = _usage_models(f"sqlite:///{tmp_path / 'llmaas.db'}", tenant_id, 20)
    assert ledger == answered


# -- the review's findings ------------------------------------------------------------------------------------------
def _database(data_dir: Path) -> Database:
    return open_database(GatewaySettings(data_dir=data_dir))


def test_the_gate_counts_only_runs_that_sampled_the_target_and_a_run_on_an_alias_names_its_draw(
    gateway: InProcessGateway, tmp_path: Path
) -> None:
    tenant_id, _, key = _tenant(gateway, key_manager=True)
    stable, candidate = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    api = _Api(gateway, _bearer(key))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=gateway.http, max_retries=0)
    eval_id = make_eval(client).id
    assert api.post("/v1/aliases", json={"name": "prod", "model": stable}).status_code == 201
    gate = {"eval_id": eval_id, "min_score": 0.9}
    _scored_run(client, eval_id, candidate, 1, 4)
    # A later completed run labelled with the candidate that graded stored answers (sampled nothing): not counted.
    database = _database(tmp_path)
    with database.sessions.begin() as session:
        sampled = session.scalars(select(EvalRun).where(EvalRun.tenant_id == tenant_id)).one()
        graded_only = {k: v for k, v in sampled.data_source.items() if k != "input_messages"}
        session.add(
            EvalRun(
                **{c.name: getattr(sampled, c.name) for c in EvalRun.__table__.columns}
                | {
                    "id": "evalrun_storedonly",
                    "data_source": graded_only | {"source": {"type": "stored_completions"}},
                    "result_counts": {"total": 5, "passed": 5, "failed": 0, "errored": 0},
                    "finished_at": sampled.finished_at + timedelta(seconds=5),
                }
            )
        )
    refused = _error(api.post("/v1/aliases/prod", json={"model": candidate, "gate": gate}), 409)["message"]
    assert "scored 0.2 (1/5 passed)" in refused, refused
    # Such a run cannot name a model in the first place.
    stored_only = {"type": "completions", "model": candidate, "source": {"type": "stored_completions"}}
    labelled = api.post(f"/v1/evals/{eval_id}/runs", json={"data_source": stored_only})
    assert _error(labelled, 400)["param"] == "data_source.model"

    # A run on a split alias is drawn once: the run and its usage name the concrete model, never the alias.
    split = [{"model": stable, "weight": 50}, {"model": candidate, "weight": 50}]
    assert api.post("/v1/aliases", json={"name": "canary", "targets": split}).status_code == 201
    source = {**completions_source({"type": "file_content", "content": [{"item": ITEMS[0]}] * 4}), "model": "canary"}
    run = finished(client, eval_id, client.evals.runs.create(eval_id, data_source=source).id)  # type: ignore[arg-type]
    assert run.status == "completed", run.error
    assert [usage.model_name for usage in run.per_model_usage] in ([stable], [candidate])
    with database.sessions.begin() as session:
        assert session.get(EvalRun, run.id).model in (stable, candidate)  # type: ignore[union-attr]
    # A key that may use the alias (not its targets by name) runs it too.
    only_alias = _key(gateway, tenant_id, allowed_models=["canary"])
    scoped = openai.OpenAI(base_url="http://testserver/v1", api_key=only_alias, http_client=gateway.http, max_retries=0)
    run = finished(scoped, eval_id, scoped.evals.runs.create(eval_id, data_source=source).id)  # type: ignore[arg-type]
    assert run.status == "completed", run.error
    database.engine.dispose()


def test_a_gate_the_operator_set_binds_the_tenant(gateway: InProcessGateway, tmp_path: Path) -> None:
    tenant_id, name, key = _tenant(gateway, key_manager=True)
    stable, candidate = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    api, admin = _Api(gateway, _bearer(key)), _Api(gateway, ADMIN)
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=gateway.http, max_retries=0)
    eval_id = make_eval(client).id
    gate = {"eval_id": eval_id, "min_score": 0.9}
    _scored_run(client, eval_id, stable, 5, 0)
    created = admin.post(f"/admin/v1/tenants/{name}/aliases", json={"name": "prod", "model": stable})
    assert created.status_code == 201, created.text
    assert admin.post(f"/admin/v1/tenants/{name}/aliases/prod", json={"model": stable, "gate": gate}).status_code == 200
    mine = make_eval(client).id
    for weaker in (None, {"eval_id": mine, "min_score": 0}):
        refused = _error(api.post("/v1/aliases/prod", json={"model": candidate, "gate": weaker}), 403)
        assert (refused["param"], refused["code"]) == ("gate", "gate_set_by_operator")
    assert _error(api.post("/v1/aliases/prod", json={"model": candidate}), 409)["code"] == "alias_gate_failed"
    assert api.get("/v1/aliases/prod").json()["gate"] == gate  # shown as the gate it is
    # The eval behind the kept gate deleted: a move that sent no gate hears why, not a 404 on a gate it never sent.
    client.evals.delete(eval_id)
    gone = _error(api.post("/v1/aliases/prod", json={"model": candidate}), 409)
    assert "no longer exists" in gone["message"] and gone["param"] == "gate"
    dropped = admin.post(f"/admin/v1/tenants/{name}/aliases/prod", json={"model": candidate, "gate": None})
    assert dropped.status_code == 200, dropped.text
    # A gate the tenant set, the tenant may drop.
    _scored_run(client, mine, stable, 1, 0)
    assert api.post("/v1/aliases/prod", json={"model": stable, "gate": {"eval_id": mine, "min_score": 0}}).is_success
    assert api.post("/v1/aliases/prod", json={"model": candidate, "gate": None}).json()["gate"] is None


def test_concurrent_changes_on_sqlite_are_409s_and_a_move_never_lands_on_a_deleted_model(
    gateway: InProcessGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, _, key = _tenant(gateway, key_manager=True)
    stable, doomed = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    api = _Api(gateway, _bearer(key))
    created = api.post("/v1/aliases", json={"name": "prod", "model": stable}).json()
    database = _database(tmp_path)
    # A version row a concurrent change wrote meanwhile (read-check-write raced): a retryable 409, never a 500.
    with database.sessions.begin() as session:
        session.add(
            ModelAliasVersion(
                alias_id=created["id"],
                tenant_id=tenant_id,
                version=2,
                action="move",
                targets=[{"model": MODEL, "weight": 100}],
                restores=1,
                actor="racer",
                created_at=datetime.now(UTC).replace(tzinfo=None),
            )
        )
    raced = _error(api.post("/v1/aliases/prod", json={"model": MODEL}), 409)
    assert "meanwhile" in raced["message"], raced
    with database.sessions.begin() as session:
        session.execute(delete(ModelAliasVersion).where(ModelAliasVersion.version == 2))
    # Many moves at once on SQLite: each is served in turn, every version is distinct, and none is a 500.
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: api.post("/v1/aliases/prod", json={"model": MODEL}).status_code, range(8)))
    assert set(statuses) <= {200, 409} and 200 in statuses, statuses
    versions = [v["version"] for v in api.get("/v1/aliases/prod/history").json()["data"]]
    assert len(versions) == len(set(versions)) == 1 + statuses.count(200)

    # The model deleted between the move's target check and its transaction: the move is refused, not dangling.
    checked = AliasService._checked_targets

    async def then_deleted(self: AliasService, *args: Any) -> Any:
        targets = await checked(self, *args)
        with database.sessions.begin() as session:
            session.execute(delete(Adapter).where(Adapter.name == doomed))
        return targets

    monkeypatch.setattr(AliasService, "_checked_targets", then_deleted)
    dangling = _error(api.post("/v1/aliases/prod", json={"model": doomed}), 400)
    assert (dangling["code"], dangling["param"]) == ("model_not_found", "targets"), dangling
    assert api.get("/v1/aliases/prod").json()["targets"] == [{"model": MODEL, "weight": 100}]
    database.engine.dispose()


def test_an_alias_may_not_take_the_name_of_a_base_model_that_is_down_for_a_moment(
    gateway: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, key = _tenant(gateway, key_manager=True)
    assert _answered_by(gateway, key, MODEL) == MODEL
    backend = gateway.state.catalog._backend  # the pool between two health checks
    monkeypatch.setattr(backend, "models", dict)
    taken = gateway.http.post("/v1/aliases", json={"name": MODEL, "model": MODEL}, headers=_bearer(key))
    assert _error(taken, 400)["code"] == "alias_name_taken"


def test_one_tenants_changes_do_not_void_another_tenants_cached_aliases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []

    def slow_read(_db: Any, tenant_id: str) -> dict[str, Any]:
        reads.append(tenant_id)
        time.sleep(0.2)
        return {}

    monkeypatch.setattr(alias_cache, "_read", slow_read)
    book = alias_cache.AliasBook(_database(tmp_path), ttl_seconds=60)

    async def scenario() -> None:
        reading = asyncio.ensure_future(book.of_tenant("a"))
        await asyncio.sleep(0.05)
        book.forget("b")  # another tenant's change while a's read is in flight
        await reading
        await book.of_tenant("a")
        book.forget("a")
        await book.of_tenant("a")

    # On its own thread: the module's in-process gateway may hold an event loop on this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, scenario()).result()
    assert reads == ["a", "a"]  # a's first read was kept; a's own change made the second


def test_refusals_name_the_alias_not_its_targets(gateway: InProcessGateway, tmp_path: Path) -> None:
    tenant_id, _, key = _tenant(gateway, key_manager=True)
    stable, gone = register_adapter(tmp_path, tenant_id), register_adapter(tmp_path, tenant_id)
    outsider = _key(gateway, tenant_id, allowed_models=[MODEL])
    api = _Api(gateway, _bearer(key))
    mostly_gone = [{"model": stable, "weight": 1}, {"model": gone, "weight": 99}]
    assert api.post("/v1/aliases", json={"name": "prod", "targets": mostly_gone}).status_code == 201
    mostly_there = [{"model": stable, "weight": 99}, {"model": gone, "weight": 1}]
    assert api.post("/v1/aliases", json={"name": "canary", "targets": mostly_there}).status_code == 201
    # Deleting an alias through /v1/models: told where, not "does not exist".
    as_model = _error(api.delete("/v1/models/prod"), 400)
    assert (as_model["code"], as_model["param"]) == ("model_is_alias", "model") and "/v1/aliases/prod" in as_model[
        "message"
    ]
    database = _database(tmp_path)
    with database.sessions.begin() as session:  # a target gone behind the aliases' back
        session.execute(delete(Adapter).where(Adapter.name == gone))
    database.engine.dispose()
    # A key that may not use the alias hears a 403 on it, never of its targets (whatever the draw).
    for _ in range(5):
        refused = _error(_chat_model(gateway, outsider, "prod"), 403)
        assert gone not in refused["message"] and stable not in refused["message"]
    # A batch naming the split checks every target, not one drawn at random.
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=gateway.http, max_retries=0)
    line = {
        "custom_id": "0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "canary", "messages": CHAT},
    }
    upload = client.files.create(file=("batch.jsonl", json.dumps(line).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.errors is not None, batch
    assert [(error.code, error.param) for error in batch.errors.data or []] == [("model_not_found", "body.model")]
    assert gone in (batch.errors.data or [])[0].message  # type: ignore[operator]
