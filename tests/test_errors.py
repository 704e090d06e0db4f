"""Bad input gets an OpenAI-style error body and the status the SDK maps to the right exception."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from langchain_core.exceptions import ContextOverflowError
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.support import MODEL
from tests.support.metrics import metric_value

HELLO = [{"role": "user", "content": "Hello"}]


def _assert_error_shape(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_malformed_json_is_400(http: httpx.Client) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = http.post(
            path, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert _assert_error_shape(response.json())["type"] == "invalid_request_error"


def test_body_not_an_object_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=[1, 2, 3])
    assert response.status_code == 400
    _assert_error_shape(response.json())


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"max_tokens": "5"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"n": 0}, "n"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_chat_parameters_are_400_naming_param(client: openai.OpenAI, overrides: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **overrides}
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400
    error = _assert_error_shape(info.value.response.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_missing_required_fields_are_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": MODEL})
    assert response.status_code == 400
    assert _assert_error_shape(response.json())["param"] == "messages"
    response = http.post("/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 400
    assert _assert_error_shape(response.json())["param"] == "model"


@pytest.mark.parametrize("prompt", ["", [], [""], [[]], [-1], [10**9]])
def test_bad_completion_prompts_are_400(http: httpx.Client, prompt: Any) -> None:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
    assert response.status_code == 400
    assert _assert_error_shape(response.json())["param"] == "prompt"


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=HELLO)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-17", prompt="hi")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_context_length_exceeded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5000)
    assert info.value.code == "context_length_exceeded"
    long_prompt = "word " * 3000
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=5)
    assert info.value.code == "context_length_exceeded"
    # Streaming requests are refused before the stream starts.
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_prompt}], stream=True)
    assert info.value.code == "context_length_exceeded"


def test_unknown_paths_and_wrong_methods_name_themselves(server: str, http: httpx.Client) -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        response = http.request(method, "/v1/nope/deeper")
        assert response.status_code == 404
        error = _assert_error_shape(response.json())
        assert error["message"] == f"Invalid URL ({method} /v1/nope/deeper): this server does not serve it."
        assert error["type"] == "invalid_request_error" and error["code"] == "unknown_url"
    response = http.get("/v1/completions")  # (GET /v1/chat/completions lists the stored chat completions)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    error = _assert_error_shape(response.json())
    assert error["message"] == "Invalid method for URL (GET /v1/completions): this server serves it with POST only."
    assert error["code"] == "method_not_allowed"
    assert http.delete("/v1/models").headers["allow"] == "GET"
    # Authentication comes first: without a key, a /v1 path is a 401 whether it is served or not.
    for path in ("/v1/nope", "/v1/models"):
        assert httpx.post(f"{server}{path}").json()["error"]["code"] == "invalid_api_key"
    public = httpx.get(f"{server}/nope")
    assert public.status_code == 404 and _assert_error_shape(public.json())["code"] == "unknown_url"


def test_the_sdks_calls_to_what_is_not_served_get_not_found_saying_so(client: openai.OpenAI) -> None:
    calls: dict[str, Callable[[], object]] = {
        "/v1/images/generations": lambda: client.images.generate(prompt="a lighthouse"),
        "/v1/audio/speech": lambda: client.audio.speech.create(model=MODEL, voice="alloy", input="hi"),
        "/v1/audio/transcriptions": lambda: client.audio.transcriptions.create(model=MODEL, file=("a.wav", b"RIFF")),
        "/v1/moderations": lambda: client.moderations.create(input="hi"),
    }
    for path, call in calls.items():
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.body == {
            "message": f"Invalid URL (POST {path}): this server does not serve it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ],
)
def test_a_non_text_content_part_is_refused_as_text_only(client: openai.OpenAI, part: dict[str, Any]) -> None:
    messages: Any = [
        {"role": "system", "content": "Describe what you are given."},
        {"role": "user", "content": [part, {"type": "text", "text": "What is this?"}]},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert info.value.code == "unsupported_content_type"
    assert info.value.param == "messages[1].content[0]"
    assert f"'{part['type']}'" in info.value.message and "accepts text only" in info.value.message


def test_a_prompt_over_the_character_cap_is_a_context_overflow_to_langchain(
    server: str, api_key: str, client: openai.OpenAI
) -> None:
    """The cap (16 characters per token of context) refuses before tokenizing, in the code and words frameworks
    know a context overflow by (LangChain's ``ContextOverflowError``)."""
    huge = "word " * 8000  # 40,000 characters: over 16 x the 2,048 tokens of the test model's context
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": huge}], max_tokens=2)
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
    assert "maximum context length" in info.value.message and "40016 characters" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=huge, max_tokens=2)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"
    chat = ChatOpenAI(model=MODEL, base_url=f"{server}/v1", api_key=SecretStr(api_key), max_retries=0)
    with pytest.raises(ContextOverflowError):
        chat.invoke(huge)
    with pytest.raises(ContextOverflowError):  # and the window itself, counted in tokens
        chat.bind(max_tokens=5000).invoke("Hello")


def test_every_response_has_the_servers_request_id_and_echoes_the_clients(http: httpx.Client) -> None:
    minted = re.compile(r"req_[0-9a-f]{32}")
    ids = {http.get("/v1/models").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(minted.fullmatch(i) for i in ids)
    for header in ("x-request-id", "X-Client-Request-Id"):
        reply = http.get("/v1/models", headers={header: "mine-1"})
        assert minted.fullmatch(reply.headers["x-request-id"])
        assert reply.headers["x-client-request-id"] == "mine-1"
    assert minted.fullmatch(http.post("/v1/completions", content=b"{").headers["x-request-id"])


@pytest.mark.parametrize("value", ["x" * 129, "has space", "tab\there", "ünïcode"])
def test_a_malformed_client_request_id_is_400(http: httpx.Client, value: str) -> None:
    response = http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
        headers={"x-request-id": value.encode()},
    )
    assert response.status_code == 400
    assert _assert_error_shape(response.json())["param"] == "x-request-id"


def test_seeds_outside_int64_are_400_and_leave_no_engine_request(client: openai.OpenAI, admin: httpx.Client) -> None:
    for seed in (2**63, -(2**63) - 1, 2**64):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, seed=seed)
        assert info.value.body["param"] == "seed"
    for seed in (2**63 - 1, -(2**63), 0):
        reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, seed=seed)
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
    assert metric_value(admin.get("/metrics").text, "llmaas_engine_requests_unfinished") == 0
