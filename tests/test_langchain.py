"""LangChain's ``ChatOpenAI`` (a real framework client) against the real server: tools bound with a forced choice,
and structured output in its three methods."""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.support import MODEL


class Weather(BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "London", "Tokyo"]
    unit: Literal["celsius", "fahrenheit"]


class LocalTime(BaseModel):
    """The local time in a time zone."""

    zone: Literal["UTC", "CET"]


def _chat(server: str, api_key: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=f"{server}/v1", api_key=api_key, max_tokens=40, temperature=0, max_retries=0
    )  # type: ignore[call-arg]


@pytest.mark.parametrize("tool_choice", ["any", "Weather"])
def test_bind_tools_with_a_forced_choice(server: str, api_key: str, tool_choice: str) -> None:
    llm = _chat(server, api_key).bind_tools([Weather, LocalTime], tool_choice=tool_choice)
    question = HumanMessage("What is the weather in Paris?")
    reply = llm.invoke([question])
    assert isinstance(reply, AIMessage) and reply.tool_calls
    for call in reply.tool_calls:
        model = {"Weather": Weather, "LocalTime": LocalTime}[call["name"]]
        model.model_validate(call["args"])  # the arguments validate against the tool's schema
    if tool_choice == "Weather":
        assert [call["name"] for call in reply.tool_calls] == ["Weather"]
    # The round trip: the tool's result goes back and the conversation goes on.
    results = [ToolMessage("22 degrees", tool_call_id=call["id"]) for call in reply.tool_calls]
    follow_up = _chat(server, api_key).bind_tools([Weather, LocalTime]).invoke([question, reply, *results])
    assert isinstance(follow_up, AIMessage) and (follow_up.content or follow_up.tool_calls)


def test_streamed_tool_calls_assemble(server: str, api_key: str) -> None:
    llm = _chat(server, api_key).bind_tools([Weather], tool_choice="Weather")
    chunks = list(llm.stream("What is the weather in Tokyo?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    [call] = merged.tool_calls  # type: ignore[attr-defined]
    Weather.model_validate(call["args"])


def test_structured_output_by_function_calling(server: str, api_key: str) -> None:
    structured = _chat(server, api_key).with_structured_output(Weather, method="function_calling")
    assert isinstance(structured.invoke("What is the weather in London?"), Weather)


@pytest.mark.skip(reason="needs response_format (branch h-structured): enable at merge")
@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_structured_output_by_response_format(server: str, api_key: str, method: str) -> None:
    structured = _chat(server, api_key).with_structured_output(Weather, method=method)  # type: ignore[arg-type]
    question = "What is the weather in London? Answer in JSON with the keys city and unit."
    assert isinstance(structured.invoke(question), Weather)
