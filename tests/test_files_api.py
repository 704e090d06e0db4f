"""``/v1/files`` and fine-tuning job validation through the official ``openai`` client."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import openai
import pytest

from tests.support import MODEL
from tests.support.tenants import create_tenant, openai_client

GOOD_CHAT = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def upload(client: openai.OpenAI, content: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> Any:
    return client.files.create(file=(name, io.BytesIO(content)), purpose=purpose)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tenant_client(server: str, admin: httpx.Client) -> openai.OpenAI:
    return openai_client(server, create_tenant(admin, "files")[1])


def test_file_lifecycle(tenant_client: openai.OpenAI) -> None:
    created = upload(tenant_client, GOOD_CHAT * 3)
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(GOOD_CHAT) * 3
    assert created.filename == "train.jsonl"
    assert created.purpose == "fine-tune"
    assert tenant_client.files.retrieve(created.id).id == created.id
    assert tenant_client.files.content(created.id).read() == GOOD_CHAT * 3
    other = upload(tenant_client, b"anything at all", name="notes.txt", purpose="user_data")
    listed = tenant_client.files.list()
    assert [f.id for f in listed.data][:2] == [other.id, created.id]
    assert [f.id for f in tenant_client.files.list(purpose="fine-tune").data] == [created.id]
    deleted = tenant_client.files.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        tenant_client.files.retrieve(created.id)


def test_file_names_never_reach_the_filesystem(tenant_client: openai.OpenAI) -> None:
    created = upload(tenant_client, GOOD_CHAT, name="../../etc/passwd.jsonl")
    assert created.filename == "passwd.jsonl"
    with pytest.raises(openai.NotFoundError):
        tenant_client.files.retrieve("file-../../etc/passwd")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"not json\n", "line 1"),
        (GOOD_CHAT + b'{"messages": [{"role": "bot", "content": "x"}]}\n', "line 2"),
        (GOOD_CHAT + b'{"messages": [{"role": "user", "content": "only a question"}]}\n', "line 2"),
        (GOOD_CHAT + b'{"prompt": "a", "completion": "b"}\n', "line 2"),
        (b"", "no examples"),
        (b'{"prompt": 5, "completion": "b"}\n', "line 1"),
    ],
)
def test_bad_jsonl_is_rejected_with_its_line(tenant_client: openai.OpenAI, content: bytes, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        upload(tenant_client, content)
    assert info.value.body["param"] == "file"
    assert fragment in info.value.message


def test_upload_validation(tenant_client: openai.OpenAI, server: str, admin: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        upload(tenant_client, GOOD_CHAT, purpose="homework")
    assert info.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError):
        upload(tenant_client, GOOD_CHAT, name="train.csv")
    _, key = create_tenant(admin, "nofile")
    missing = httpx.post(
        f"{server}/v1/files", data={"purpose": "fine-tune"}, headers={"authorization": f"Bearer {key}"}
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "file"


def test_other_tenants_files_are_404(tenant_client: openai.OpenAI, server: str, admin: httpx.Client) -> None:
    mine = upload(tenant_client, GOOD_CHAT)
    stranger = openai_client(server, create_tenant(admin, "stranger")[1])
    for call in (
        lambda: stranger.files.retrieve(mine.id),
        lambda: stranger.files.content(mine.id),
        lambda: stranger.files.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert mine.id not in [f.id for f in stranger.files.list().data]
    with pytest.raises(openai.BadRequestError) as info:
        stranger.fine_tuning.jobs.create(model=MODEL, training_file=mine.id)
    assert info.value.code == "file_not_found"


@pytest.mark.parametrize(
    ("overrides", "param", "code"),
    [
        ({"model": "gpt-17"}, "model", "model_not_available"),
        ({"training_file": "file-doesnotexist"}, "training_file", "file_not_found"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", None),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs", None),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier", None),
        ({"hyperparameters": {"learning_rate_multiplier": 51}}, "hyperparameters.learning_rate_multiplier", None),
        ({"method": {"type": "reinforcement"}}, "method.type", None),
        ({"method": {"type": "dpo"}}, "training_file", "invalid_file_format"),  # a chat file: DPO trains on pairs
        ({"suffix": "has:colon"}, "suffix", None),
        ({"lora": {"rank": 128}}, "lora.rank", None),
        ({"lora": {"target_modules": []}}, "lora.target_modules", None),
        ({"hyperparameters": {"n_epochs": 1}, "method": {"type": "supervised"}}, "hyperparameters", None),
    ],
)
def test_bad_job_requests_are_400(
    tenant_client: openai.OpenAI, overrides: dict[str, Any], param: str, code: str | None
) -> None:
    good = upload(tenant_client, GOOD_CHAT)
    body = {"model": MODEL, "training_file": good.id, **overrides}
    with pytest.raises(openai.BadRequestError) as info:
        tenant_client.post("/fine_tuning/jobs", body=body, cast_to=object)
    assert info.value.body["param"] == param
    if code:
        assert info.value.code == code


def test_wrong_purpose_file_cannot_train(tenant_client: openai.OpenAI) -> None:
    notes = upload(tenant_client, GOOD_CHAT, purpose="user_data")
    with pytest.raises(openai.BadRequestError) as info:
        tenant_client.fine_tuning.jobs.create(model=MODEL, training_file=notes.id)
    assert info.value.code == "invalid_file_purpose"


def test_job_budget_is_checked_at_creation(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "poor", monthly_token_budget=10)
    client = openai_client(server, key)
    good = upload(client, GOOD_CHAT * 5)
    with pytest.raises(openai.RateLimitError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=good.id)
    assert info.value.code == "insufficient_quota"
    assert json.loads(info.value.response.text)["error"]["type"] == "insufficient_quota"
