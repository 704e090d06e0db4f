"""How a client asks for structured output: OpenAI's ``response_format`` (text, JSON object, JSON schema) and vLLM's
``structured_outputs`` extra, as request types. ``gateway.inference.structured`` checks the constraint they give."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field

from engine.protocol import StructuredKind
from gateway.errors import InvalidRequestError
from gateway.inference.request_fields import StrictRequest


class TextFormat(StrictRequest):
    type: Literal["text"]


class JsonObjectFormat(StrictRequest):
    type: Literal["json_object"]


class JsonSchema(StrictRequest):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    """Always enforced here: the output matches the schema whether or not ``strict`` is set."""


class JsonSchemaFormat(StrictRequest):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StructuredOutputsField(StrictRequest):
    """vLLM's ``structured_outputs`` extra: exactly one constraint (its other fields are not taken)."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None
    json_object: Literal[True] | None = None

    def constraint(self) -> tuple[StructuredKind, Any]:
        fields: tuple[tuple[StructuredKind, Any], ...] = (
            ("json", self.json_),
            ("regex", self.regex),
            ("choice", self.choice),
            ("grammar", self.grammar),
            ("json_object", self.json_object),
        )
        given = [(kind, value) for kind, value in fields if value is not None]
        if len(given) != 1:
            raise InvalidRequestError(
                "structured_outputs takes exactly one of json, regex, choice, grammar, json_object",
                param="structured_outputs",
            )
        kind, value = given[0]
        if kind == "json" and isinstance(value, str):
            return kind, schema_text(value, "structured_outputs")
        return kind, value


def schema_text(text: str, param: str) -> Any:
    """A JSON schema sent as JSON text (vLLM takes both)."""
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidRequestError("The JSON schema is not valid JSON.", param=param) from None
