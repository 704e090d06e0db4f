"""Structured-output constraints from clients, checked before the engine sees them: a JSON schema (from
``response_format``, a tool's ``parameters``, ``text.format`` of the Responses API), a regex, a list of choices or a
grammar becomes an ``engine.protocol.StructuredOutput``, or a 400 naming the param.

Every check is cheap first (size, depth, references) and cached per constraint: the same schema sent again costs a
dictionary lookup."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from engine.protocol import StructuredKind, StructuredOutput
from gateway.errors import InvalidRequestError


@dataclass(frozen=True)
class StructuredLimits:
    max_bytes: int = 64 * 1024
    """A schema, regex or grammar, serialised."""
    max_depth: int = 32
    """Nesting of a JSON schema's objects and arrays."""
    cache_size: int = 1024
    """Constraints remembered as checked."""


class StructuredOutputs:
    """Turns client constraints into checked ``StructuredOutput`` values (one per app, shared by all tenants)."""

    def __init__(self, limits: StructuredLimits | None = None) -> None:
        self._limits = limits or StructuredLimits()
        self._checked: OrderedDict[StructuredOutput, InvalidRequestError | None] = OrderedDict()

    async def json_schema(self, schema: Any, param: str) -> StructuredOutput:
        """A JSON schema (a dict, as the client sent it) as a constraint; a 400 naming ``param`` if it is not one we
        take."""
        if not isinstance(schema, dict):
            raise InvalidRequestError("A JSON schema must be an object.", param=param, code="invalid_json_schema")
        _check_depth(schema, self._limits.max_depth, param)
        spec = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return await self.constraint(StructuredOutput("json", spec), param)

    async def constraint(self, structured: StructuredOutput, param: str) -> StructuredOutput:
        """Any constraint (``json``, ``json_object``, ``regex``, ``choice``, ``grammar``), checked once."""
        if len(structured.spec.encode()) > self._limits.max_bytes:
            raise InvalidRequestError(
                f"The {_what(structured.kind)} is {len(structured.spec.encode())} bytes; this server takes at most "
                f"{self._limits.max_bytes}.",
                param=param,
                code="structured_output_too_large",
            )
        if structured in self._checked:
            self._checked.move_to_end(structured)
            error = self._checked[structured]
        else:
            error = _problem(structured, param)
            self._checked[structured] = error
            if len(self._checked) > self._limits.cache_size:
                self._checked.popitem(last=False)
        if error is not None:
            raise error
        return structured


def _what(kind: StructuredKind) -> str:
    return {"json": "JSON schema", "json_object": "JSON object", "regex": "regex", "choice": "choice list"}.get(
        kind, "grammar"
    )


def _check_depth(schema: Any, max_depth: int, param: str) -> None:
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise InvalidRequestError(
                f"The JSON schema nests deeper than {max_depth} levels.", param=param, code="invalid_json_schema"
            )
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _problem(structured: StructuredOutput, param: str) -> InvalidRequestError | None:
    """What is wrong with a constraint, or None."""
    if structured.kind != "json":
        return None
    schema = json.loads(structured.spec)
    remote = [ref for ref in _refs(schema) if not ref.startswith("#")]
    if remote:
        return InvalidRequestError(
            f"The JSON schema refers to '{remote[0][:200]}': only references inside the schema ('#/...') are allowed.",
            param=param,
            code="invalid_json_schema",
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return InvalidRequestError(f"Invalid JSON schema: {exc.message[:500]}", param=param, code="invalid_json_schema")
    return None
