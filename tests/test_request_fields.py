"""Nothing a client sends is silently dropped: every field of the installed ``openai`` SDK's request types is
honoured, refused with a 400 naming it, or in the documented accepted-and-ignored list; unknown fields are
400s naming them, on every ``/v1`` route that takes a body. When an SDK upgrade adds a field, these tests
say which of the three it is.

Runs one real gateway process in front of the instant fake engine."""

from __future__ import annotations

import io
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import completion_create_params, eval_create_params, eval_update_params, file_create_params
from openai.types.chat import ChatCompletionMessageParam
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.evals import run_create_params
from openai.types.fine_tuning import job_create_params

from gateway.inference.api_types import ACCEPTED_AND_IGNORED, ChatCompletionRequest, CompletionRequest
from tests.support import MODEL
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import openai_client, tenant_key

HI = [{"role": "user", "content": "hi"}]
PROBE = {"probe": "a value asking for something"}
"""Not null, not empty, not the harmless value of any refused field: whatever the field, it asks for something."""

CHAT_HONOURED = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "user", "stream_options", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "store", "metadata",
}  # fmt: skip
COMPLETIONS_HONOURED = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logprobs", "echo", "user", "stream_options", "best_of",
}  # fmt: skip
IGNORED_SAMPLES = {
    "prompt_cache_key": "conversation-1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"},
    "safety_identifier": "user-1",
}
JOB_HONOURED = {"model", "training_file", "validation_file", "suffix", "seed", "hyperparameters", "method", "metadata"}
EVAL_HONOURED = {"name", "data_source_config", "testing_criteria", "metadata"}
RUN_HONOURED = {"name", "data_source", "metadata"}
FILE_HONOURED = {"file", "purpose"}
MESSAGE_HONOURED = {"role", "content", "name", "tool_calls", "tool_call_id"}

EVAL = {
    "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
    "testing_criteria": [{"type": "string_check", "name": "eq", "input": "a", "reference": "a", "operation": "eq"}],
}
JSONL_RUN = {
    "data_source": {
        "type": "jsonl",
        "source": {"type": "file_content", "content": [{"item": {}, "sample": {"output_text": "a"}}]},
    }
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("fields")) as running:
        yield running.base


@pytest.fixture(scope="module")
def key(gateway: str) -> str:
    return tenant_key(gateway, "fields")[1]


@pytest.fixture(scope="module")
def http(gateway: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(gateway: str, key: str) -> openai.OpenAI:
    return openai_client(gateway, key)


def fields_of(params: Any) -> set[str]:
    return set(params.__annotations__)


def refused(response: httpx.Response, param: str) -> bool:
    error = response.json().get("error", {})
    return response.status_code == 400 and error.get("param") == param and param in error.get("message", "")


def walk(http: httpx.Client, path: str, base: dict[str, Any], sdk_fields: set[str], honoured: set[str]) -> list[str]:
    """Each SDK field that is neither honoured nor accepted-and-ignored must be refused by name; the silently
    dropped ones are returned."""
    dropped = []
    for field in sorted(sdk_fields - honoured - set(base)):
        if field in ACCEPTED_AND_IGNORED:
            continue
        response = http.post(path, json={**base, field: PROBE})
        if not refused(response, field):
            dropped.append(f"{path} {field}: {response.status_code} {response.text[:200]}")
    return dropped


def test_every_chat_and_completions_field_of_the_sdk_is_honoured_refused_or_documented(http: httpx.Client) -> None:
    chat_fields = fields_of(chat_create_params.CompletionCreateParamsBase)
    completion_fields = fields_of(completion_create_params.CompletionCreateParamsBase)
    assert set(ChatCompletionRequest.model_fields) >= CHAT_HONOURED
    assert set(CompletionRequest.model_fields) >= COMPLETIONS_HONOURED
    dropped = walk(http, "/v1/chat/completions", {"model": MODEL, "messages": HI}, chat_fields, CHAT_HONOURED)
    dropped += walk(http, "/v1/completions", {"model": MODEL, "prompt": "hi"}, completion_fields, COMPLETIONS_HONOURED)
    for message_type in typing.get_args(ChatCompletionMessageParam):
        for field in sorted(fields_of(message_type) - MESSAGE_HONOURED):
            message = {"role": "assistant", "content": "x", field: PROBE}
            response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [*HI, message]})
            if not refused(response, f"messages[1].{field}"):
                dropped.append(f"{message_type.__name__} {field}: {response.status_code} {response.text[:200]}")
    assert not dropped, "silently dropped:\n" + "\n".join(dropped)
    # The documented ones are accepted (and change nothing); each is an SDK field.
    assert chat_fields >= ACCEPTED_AND_IGNORED == set(IGNORED_SAMPLES)
    answered = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, **IGNORED_SAMPLES})
    assert answered.status_code == 200, answered.text


def test_every_job_eval_and_file_field_of_the_sdk_is_honoured_or_refused(http: httpx.Client) -> None:
    dropped = walk(
        http,
        "/v1/fine_tuning/jobs",
        {"model": MODEL, "training_file": "file-nope"},
        fields_of(job_create_params.JobCreateParams),
        JOB_HONOURED,
    )
    dropped += walk(http, "/v1/evals", EVAL, fields_of(eval_create_params.EvalCreateParams), EVAL_HONOURED)
    eval_id = http.post("/v1/evals", json=EVAL).json()["id"]
    dropped += walk(
        http,
        f"/v1/evals/{eval_id}",
        {},
        fields_of(eval_update_params.EvalUpdateParams),
        EVAL_HONOURED & {"name", "metadata"},
    )
    dropped += walk(
        http, f"/v1/evals/{eval_id}/runs", JSONL_RUN, fields_of(run_create_params.RunCreateParams), RUN_HONOURED
    )
    assert not dropped, "silently dropped:\n" + "\n".join(dropped)
    assert fields_of(file_create_params.FileCreateParams) - FILE_HONOURED == {"expires_after"}  # refused below


def test_unknown_fields_are_400s_naming_them_on_every_route(http: httpx.Client) -> None:
    eval_id = http.post("/v1/evals", json=EVAL).json()["id"]
    for path, body in (
        ("/v1/chat/completions", {"model": MODEL, "messages": HI}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
        ("/v1/fine_tuning/jobs", {"model": MODEL, "training_file": "file-nope"}),
        ("/v1/evals", EVAL),
        (f"/v1/evals/{eval_id}", {"name": "renamed"}),
        (f"/v1/evals/{eval_id}/runs", JSONL_RUN),
    ):
        response = http.post(path, json={**body, "frobnicate": 1, "also_this": True})
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "unknown_parameter" and error["param"] == "frobnicate", path
        assert "also_this" in error["message"] and "frobnicate" in error["message"], path
    nested = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{**HI[0], "weight": 1}]})
    assert nested.json()["error"]["param"] == "messages[0].weight"
    upload = http.post(
        "/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "user_data", "expires_after[seconds]": "3600"}
    )
    assert upload.status_code == 400 and upload.json()["error"]["param"] == "expires_after[seconds]"
    assert http.get("/v1/files").json()["data"] == []


def test_unknown_query_parameters_are_400s_naming_them(http: httpx.Client, client: openai.OpenAI) -> None:
    for path, params in (
        ("/v1/models", {"limit": "5"}),
        ("/v1/files", {"purpose": "fine-tune", "cache_buster": "1"}),
        ("/v1/fine_tuning/jobs", {"metadata[team]": "search"}),  # a filter we do not have: not all jobs instead
        ("/v1/evals", {"order_by": "updated_at"}),
    ):
        response = http.get(path, params=params)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "unknown_parameter" and error["param"] in params and error["param"] in error["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.evals.list(order_by="updated_at")
    assert info.value.param == "order_by"
    assert http.get("/v1/files", params={"purpose": "fine-tune", "limit": 2, "order": "asc"}).status_code == 200
    assert http.get("/v1/evals", params={"limit": 2, "order": "desc"}).status_code == 200


def test_the_official_client_gets_a_400_for_what_it_cannot_have(client: openai.OpenAI) -> None:
    functions = [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    for kwargs, param in (
        ({"function_call": {"name": "lookup"}}, "function_call"),
        ({"functions": functions}, "functions"),
        ({"tool_choice": "required"}, "tool_choice"),  # without tools
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"extra_body": {"guided_decoding_backend": "xgrammar"}}, "guided_decoding_backend"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, **kwargs)  # type: ignore[call-overload]
        assert info.value.param == param and param in info.value.message, kwargs
    with pytest.raises(openai.BadRequestError) as refused_upload:
        client.files.create(
            file=("a.txt", io.BytesIO(b"x")),
            purpose="user_data",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
    assert "expires_after" in refused_upload.value.message
    with pytest.raises(openai.BadRequestError) as refused_job:
        client.fine_tuning.jobs.create(
            model=MODEL, training_file="file-nope", integrations=[{"type": "wandb", "wandb": {"project": "p"}}]
        )
    assert refused_job.value.param == "integrations"


def test_harmless_values_and_our_own_answers_sent_back_pass(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=2,
        tools=[],
        tool_choice="none",
        store=False,
        modalities=["text"],
        service_tier="auto",
        logit_bias={},
        metadata={"k": "v"},
    )
    answer = first.choices[0].message
    again = client.chat.completions.create(
        model=MODEL,
        messages=[*HI, answer, {"role": "user", "content": "more"}],
        max_tokens=2,  # type: ignore[list-item]
    )
    assert again.choices[0].message.content
