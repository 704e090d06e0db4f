"""Stored chat completions (``store: true``) through the official ``openai`` client: on the real SmolLM2 the answer
and the bill are the same stored or not, streamed or not, and the stored object is the answer; on the instant fake
engine, the gateway's logic: listing with filters and pages, retrieve, messages, metadata updates, deletion,
isolation between tenants, the operator's switch, the storage quota, retention, erasure and export, the
fine-tuning exports (SFT and DPO files the training validators accept) and eval runs over stored completions."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adapters.datasets import ChatExample, iter_examples
from gateway.audit import Actor
from gateway.batches.lines import read_lines
from gateway.clock import utcnow
from gateway.db import Database, StoredCompletion
from gateway.fine_tuning.files import FileStore
from gateway.retention import Retention
from gateway.stored_completions.store import CompletionStore, Selection
from gateway.tenancy.models import TenantCreate
from gateway.tenancy.service import TenancyService
from tests.support import ADMIN_KEY, MODEL
from tests.support.databases import ledger_rows
from tests.support.evals import finished
from tests.support.in_process import InProcessGateway
from tests.support.tenants import create_tenant, openai_client

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
Start = Callable[..., InProcessGateway]


# -- the real model: storing changes neither the answer nor the bill --------------------------------------------------
def test_storing_changes_neither_the_answer_nor_the_bill(
    admin: httpx.Client, server: str, server_data_dir: Path
) -> None:
    tenant, key = create_tenant(admin, "stored-real")
    client = openai_client(server, key)
    asked: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 24}
    plain = client.chat.completions.create(**asked)
    kept = client.chat.completions.create(**asked, store=True, metadata={"run": "real"})
    assert kept.choices[0].message.content == plain.choices[0].message.content
    assert kept.usage is not None and plain.usage is not None
    assert (kept.usage.prompt_tokens, kept.usage.completion_tokens) == (
        plain.usage.prompt_tokens,
        plain.usage.completion_tokens,
    )
    stored = client.chat.completions.retrieve(kept.id)
    assert stored.model_dump(exclude={"metadata"}) == kept.model_dump(exclude={"metadata"})
    assert stored.metadata == {"run": "real"}
    chunks = list(
        client.chat.completions.create(**asked, store=True, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    streamed = client.chat.completions.retrieve(chunks[0].id)
    assert text == plain.choices[0].message.content == streamed.choices[0].message.content
    assert streamed.choices[0].finish_reason == plain.choices[0].finish_reason
    assert streamed.usage == chunks[-1].usage
    [first] = client.chat.completions.messages.list(kept.id).data
    assert (first.role, first.content, first.id) == ("user", QUESTION[0]["content"], f"{kept.id}-0")
    told = sorted((u.prompt_tokens, u.completion_tokens) for u in (plain.usage, kept.usage, chunks[-1].usage) if u)
    database = f"sqlite:///{server_data_dir / 'llmaas.db'}"
    deadline = time.monotonic() + 10
    while len(rows := ledger_rows(database, tenant["id"])) < len(told) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted((prompt, completion) for _, prompt, completion, _ in rows) == told


# -- the gateway's logic on the instant fake engine -------------------------------------------------------------------
def _ask(client: openai.OpenAI, text: str = "hi", **options: Any) -> Any:
    return client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": text}], **{"max_tokens": 8, **options}
    )


def _admin(gateway: InProcessGateway) -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def test_stored_completions_are_listed_filtered_paged_updated_and_deleted(in_process: Start) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    made = [_ask(client, f"q{i}", store=True, metadata={"group": "even" if i % 2 == 0 else "odd"}) for i in range(5)]
    _ask(client, "not kept")  # store defaults to false
    streamed = list(_ask(client, "streamed", store=True, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    ids = [c.id for c in made] + [streamed[0].id]

    listed = client.chat.completions.list(limit=100)
    assert [c.id for c in listed.data] == ids  # oldest first, as OpenAI's default order
    assert [c.id for c in client.chat.completions.list(order="desc", limit=100).data] == ids[::-1]
    assert [c.id for c in client.chat.completions.list(metadata={"group": "even"}).data] == ids[0:5:2]
    assert [c.id for c in client.chat.completions.list(metadata={"group": "none"}).data] == []
    assert [c.id for c in client.chat.completions.list(model="other").data] == []
    assert len(client.chat.completions.list(model="fake").data) == 6
    paged = [c.id for c in client.chat.completions.list(limit=2)]  # the SDK follows has_more / after
    assert paged == ids
    first = client.chat.completions.list(limit=2)
    assert first.has_more and first.last_id == ids[1]  # type: ignore[attr-defined]

    kept = client.chat.completions.retrieve(made[0].id)
    assert kept.choices[0].message.content == made[0].choices[0].message.content
    assert kept.metadata == {"group": "even"}
    again = client.chat.completions.retrieve(streamed[0].id)
    assert again.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert again.choices[0].finish_reason == "length" and again.usage is not None

    updated = client.chat.completions.update(made[0].id, metadata={"group": "odd", "label": "good"})
    assert updated.metadata == {"group": "odd", "label": "good"}
    assert made[0].id in [c.id for c in client.chat.completions.list(metadata={"group": "odd", "label": "good"})]

    deleted = client.chat.completions.delete(made[1].id)
    assert (deleted.id, deleted.deleted, deleted.object) == (made[1].id, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(made[1].id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(made[1].id)


def test_a_completions_messages_are_paged_with_ids(in_process: Start) -> None:
    _, _, client = in_process().tenant()
    messages: list[Any] = [{"role": "system", "content": "Be brief."}]
    for i in range(4):
        messages += [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]
    messages.append({"role": "user", "content": [{"type": "text", "text": "last "}, {"type": "text", "text": "one"}]})
    made = client.chat.completions.create(model="fake", messages=messages, max_tokens=4, store=True)
    page = client.chat.completions.messages.list(made.id, limit=3)
    assert [m.id for m in page.data] == [f"{made.id}-{i}" for i in range(3)] and page.has_more
    every = list(client.chat.completions.messages.list(made.id, limit=4))
    assert [m.role for m in every] == [m["role"] for m in messages]
    assert every[-1].content == "last one" and every[-1].content_parts is not None
    assert every[1].content_parts is None and every[1].content == "u0"
    backwards = client.chat.completions.messages.list(made.id, order="desc", limit=100)
    assert [m.id for m in backwards.data] == [m.id for m in every][::-1]


def test_another_tenant_finds_nothing(in_process: Start) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    _, _, other = gateway.tenant("other")
    mine = _ask(client, "secret", store=True, metadata={"k": "v"})
    for call in (
        lambda: other.chat.completions.retrieve(mine.id),
        lambda: other.chat.completions.update(mine.id, metadata={"k": "w"}),
        lambda: other.chat.completions.delete(mine.id),
        lambda: other.chat.completions.messages.list(mine.id),
        lambda: other.chat.completions.list(after=mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.chat.completions.list().data == []
    assert client.chat.completions.retrieve(mine.id).metadata == {"k": "v"}


def test_the_operator_may_forbid_storing(in_process: Start) -> None:
    gateway = in_process()
    tenant_id, _, client = gateway.tenant()
    turned_off = gateway.http.patch(
        f"/admin/v1/tenants/{tenant_id}", json={"store_completions": False}, headers=_admin(gateway)
    )
    assert turned_off.status_code == 200 and turned_off.json()["store_completions"] is False
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(client, store=True)
    assert refused.value.code == "store_disabled" and refused.value.param == "store"
    with pytest.raises(openai.BadRequestError):
        _ask(client, store=True, stream=True)
    assert _ask(client, store=False).choices[0].message.content  # without store the model still answers
    assert client.chat.completions.list().data == []


def test_stored_bytes_count_in_the_storage_quota_with_files(in_process: Start, tmp_path: Path) -> None:
    gateway = in_process()
    tenant_id, _, client = gateway.tenant(max_storage_bytes=2000)
    first = _ask(client, "x" * 400, store=True)
    used = gateway.state.files.used_bytes(tenant_id)
    assert 400 < used < 1000
    with pytest.raises(openai.RateLimitError) as refused:  # the request alone passes what is left
        _ask(client, "y" * (2000 - used), store=True)
    assert refused.value.code == "insufficient_quota" and refused.value.param == "store"
    assert refused.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.RateLimitError):  # and a file upload sees the completions' bytes too
        client.files.create(file=("a.jsonl", b"x" * (2000 - used + 1)), purpose="batch")
    client.chat.completions.delete(first.id)
    assert gateway.state.files.used_bytes(tenant_id) == 0
    assert _ask(client, "y" * (2000 - used), store=True).id
    now_used = gateway.state.files.used_bytes(tenant_id)
    assert 1000 < now_used <= 2000  # an export of it all needs as many bytes again: refused before it is written
    refused_export = _export(gateway, client, {"type": "sft"})
    assert refused_export.status_code == 429 and refused_export.json()["error"]["param"] == "filter"
    assert client.files.list().data == []


def test_retention_erasure_and_export_cover_stored_completions(in_process: Start, tmp_path: Path) -> None:
    gateway = in_process()
    tenant_id, name, client = gateway.tenant()
    _, _, other = gateway.tenant("other")
    old = _ask(client, "old secret", store=True)
    kept = _ask(client, "new secret", store=True)
    others = _ask(other, "not theirs", store=True)
    database = Database(f"sqlite:///{tmp_path / 'llmaas.db'}")
    try:
        with database.session() as session:
            session.get(StoredCompletion, old.id).created_at = utcnow() - timedelta(days=31)  # type: ignore[union-attr]
        retention = Retention(database, gateway.state.files, files_days=None, eval_items_days=None, completions_days=30)
        assert retention.purge_once()["chat_completions"] == 1
        assert retention.purge_once()["chat_completions"] == 0
    finally:
        database.dispose()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(old.id)
    out = io.BytesIO()
    gateway.state.exports.write(tenant_id, out)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as archive:
        lines = archive.extractfile("chat_completions.jsonl").read().splitlines()  # type: ignore[union-attr]
    [row] = [json.loads(line) for line in lines]
    assert row["id"] == kept.id and row["request"]["messages"][0]["content"] == "new secret"
    erased = gateway.state.eraser.erase(name, Actor("operator"))
    assert erased.counts["chat_completions"] == 1
    assert other.chat.completions.retrieve(others.id).id == others.id


def _export(gateway: InProcessGateway, client: openai.OpenAI, body: dict[str, Any]) -> Any:
    """Our extension's route, with the client's key (the SDK has no method for it)."""
    headers = {"authorization": f"Bearer {client.api_key}"}
    return gateway.http.post("/v1/chat/completions/exports", json=body, headers=headers)


def _file_lines(client: openai.OpenAI, file_id: str) -> list[bytes]:
    return [line for line in client.files.content(file_id).content.splitlines() if line]


def test_exports_make_fine_tuning_files(in_process: Start) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    system: Any = {"role": "developer", "content": "Answer briefly."}
    good = [
        client.chat.completions.create(
            model="fake", messages=[system, {"role": "user", "content": f"q{i}"}], max_tokens=8 + i, store=True,
            metadata={"label": "good"},
        )
        for i in range(3)
    ]  # fmt: skip
    worse = client.chat.completions.create(
        model="fake", messages=[system, {"role": "user", "content": "q0"}], max_tokens=3, store=True
    )
    exported = _export(gateway, client, {"type": "sft", "filter": {"metadata": {"label": "good"}}}).json()
    assert exported["purpose"] == "fine-tune" and exported["filename"].endswith(".jsonl")
    lines = _file_lines(client, exported["id"])
    examples = list(iter_examples(lines))  # the training file validator accepts every line
    assert len(examples) == 3 and all(isinstance(example, ChatExample) for example in examples)
    newest = json.loads(lines[0])["messages"]
    assert newest[0] == {"role": "system", "content": "Answer briefly."}
    assert newest[-1] == {"role": "assistant", "content": good[2].choices[0].message.content}

    dpo = _export(
        gateway, client, {"type": "dpo", "pairs": [{"preferred": good[0].id, "non_preferred": worse.id}]}
    ).json()
    [line] = [json.loads(line) for line in _file_lines(client, dpo["id"])]
    assert line == {
        "input": {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "q0"}]},
        "preferred_output": [{"role": "assistant", "content": good[0].choices[0].message.content}],
        "non_preferred_output": [{"role": "assistant", "content": worse.choices[0].message.content}],
    }
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"type": "dpo", "pairs": [{"preferred": good[0].id, "non_preferred": good[1].id}]}, 400, "pairs"),
        ({"type": "dpo", "pairs": [{"preferred": good[0].id, "non_preferred": good[0].id}]}, 400, "pairs"),
        ({"type": "dpo", "pairs": [{"preferred": good[0].id, "non_preferred": "chatcmpl-nope"}]}, 404, "pairs"),
        ({"type": "sft", "filter": {"ids": ["chatcmpl-nope"]}}, 400, "filter"),
        ({"type": "sft", "filter": {"limit": 100_000}}, 400, "sft.filter.limit"),  # the type, then the field
        ({"type": "csv"}, 400, None),
        ({"type": "sft", "filename": "../../etc/passwd"}, 400, "filename"),
    ]
    for body, status, param in cases:
        refused = _export(gateway, client, body)
        assert refused.status_code == status and refused.json()["error"]["param"] == param, refused.text


def test_bogus_ids_and_filters_are_refused(in_process: Start) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    http = gateway.http
    headers = {"authorization": f"Bearer {client.api_key}"}
    base = "/v1/chat/completions"
    for path, status in (
        ("/chatcmpl-unknown", 404),
        ("/" + "c" * 65, 400),
        ("/chatcmpl-x%00", 400),
        ("/chatcmpl-x/messages?after=%27%3B+drop", 400),
        ("/chatcmpl-x/messages?limit=0", 400),
        ("?limit=101", 400),
        ("?order=sideways", 400),
        ("?" + "&".join(f"metadata[k{i}]=v" for i in range(17)), 400),
        ("?metadata[k]=" + "v" * 513, 400),
    ):
        assert http.get(base + path, headers=headers).status_code == status, path
    stored = _ask(client, store=True)
    too_much = http.post(f"{base}/{stored.id}", json={"metadata": {f"k{i}": "v" for i in range(17)}}, headers=headers)
    assert too_much.status_code == 400 and too_much.json()["error"]["param"] == "metadata"
    other_field = http.post(f"{base}/{stored.id}", json={"metadata": {}, "model": "x"}, headers=headers)
    assert other_field.status_code == 400
    with pytest.raises(openai.BadRequestError):
        _ask(client, store="yes")


def test_an_eval_grades_stored_completions_or_resamples_their_input(in_process: Start) -> None:
    gateway = in_process()
    _, _, client = gateway.tenant()
    _, _, other = gateway.tenant("other")
    # The fake engine spells "The quick brown fox..." one byte a token: max_tokens decides each answer.
    for tokens, version in ((9, "v1"), (3, "v1"), (9, "v2")):
        _ask(client, f"q{tokens}", max_tokens=tokens, store=True, metadata={"prompt": version})
    _ask(other, "not theirs", max_tokens=9, store=True, metadata={"prompt": "v1"})
    criteria: Any = [
        {
            "type": "string_check",
            "name": "quick",
            "input": "{{sample.output_text}}",
            "reference": "The quick",
            "operation": "eq",
        }
    ]
    evaluation = client.evals.create(
        name="stored",
        data_source_config={"type": "stored_completions", "metadata": {"prompt": "v1"}},
        testing_criteria=criteria,
    )
    config: Any = evaluation.data_source_config.to_dict()
    assert config["type"] == "stored_completions" and config["metadata"] == {"prompt": "v1"}
    assert set(config["schema"]["properties"]) == {"item", "sample"}
    graded = client.evals.runs.create(
        evaluation.id, name="as answered", data_source={"type": "completions", "source": {"type": "stored_completions"}}
    )
    run = finished(client, evaluation.id, graded.id)
    assert run.status == "completed", run.error
    assert (run.result_counts.total, run.result_counts.passed, run.result_counts.failed) == (2, 1, 1)
    outputs: list[Any] = [o.to_dict() for o in client.evals.runs.output_items.list(graded.id, eval_id=evaluation.id)]
    assert sorted(o["sample"]["output_text"] for o in outputs) == ["The", "The quick"]
    assert {o["datasource_item"]["input"][0]["content"] for o in outputs} == {"q9", "q3"}
    assert run.per_model_usage == []  # nothing was generated: the stored answers were graded

    resampled = client.evals.runs.create(
        evaluation.id,
        name="again",
        data_source={
            "type": "completions",
            "model": "fake",
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"max_completion_tokens": 9},
            "source": {"type": "stored_completions", "limit": 1},
        },
    )
    run = finished(client, evaluation.id, resampled.id)
    assert run.status == "completed", run.error
    assert (run.result_counts.total, run.result_counts.passed) == (1, 1)
    assert run.per_model_usage[0].invocation_count == 1

    with pytest.raises(openai.BadRequestError) as refused:  # nothing matches: refused at creation
        client.evals.runs.create(
            evaluation.id,
            data_source={"type": "completions", "source": {"type": "stored_completions", "metadata": {"x": "y"}}},
        )
    assert refused.value.param == "data_source.source"
    custom = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=criteria
    )
    with pytest.raises(openai.BadRequestError) as refused:  # its items are not stored completions
        client.evals.runs.create(
            custom.id, data_source={"type": "completions", "source": {"type": "stored_completions"}}
        )
    assert refused.value.param == "data_source.source"
    with pytest.raises(openai.BadRequestError):  # without stored answers, input_messages are needed
        client.evals.runs.create(
            evaluation.id,
            data_source={"type": "completions", "model": "fake", "source": {"type": "file_content", "content": []}},
        )


def test_a_batch_does_not_store() -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "store": True}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    checked = read_lines(json.dumps(line).encode(), "/v1/chat/completions", 10, 16)
    assert [(error["param"], error["line"]) for error in checked.errors] == [("body.store", 1)]
    assert read_lines(
        json.dumps({**line, "body": {**body, "store": False}}).encode(), "/v1/chat/completions", 10, 16
    ).lines


def test_filters_pages_and_the_quota_sum_on_sqlite_and_postgresql(database: Database, tmp_path: Path) -> None:
    """The store itself on both databases: JSON metadata filters, keyset pages, the bytes the quota counts."""
    tenant = TenancyService(database).create_tenant(TenantCreate(name="stored")).id
    files = FileStore(database, tmp_path / "files")
    store = CompletionStore(database, files, 10**9)
    for index in range(5):
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "model": "m" if index < 4 else "n",
            "created": 0,
            "system_fingerprint": None,
            "choices": [],
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "total_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        store.save(tenant, {"messages": []}, completion, {"k": "even" if index % 2 == 0 else "odd", "x y": "1"})
    assert [c.id for c in store.list(tenant, None, {"k": "even"}, None, 10, "asc").data] == [
        "chatcmpl-0",
        "chatcmpl-2",
        "chatcmpl-4",
    ]
    assert [c.id for c in store.list(tenant, "m", {"k": "even", "x y": "1"}, None, 10, "desc").data] == [
        "chatcmpl-2",
        "chatcmpl-0",
    ]
    page = store.list(tenant, None, {}, "chatcmpl-1", 2, "asc")
    assert [c.id for c in page.data] == ["chatcmpl-2", "chatcmpl-3"] and page.has_more
    ids, size = store.selected(tenant, Selection(metadata={"k": "odd"}))
    assert ids == ["chatcmpl-3", "chatcmpl-1"] and 0 < size < files.used_bytes(tenant)
    for even in ("chatcmpl-0", "chatcmpl-2", "chatcmpl-4"):
        store.delete(tenant, even)
    assert files.used_bytes(tenant) == size
