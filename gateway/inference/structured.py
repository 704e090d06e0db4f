"""Structured-output constraints from clients, checked before the engine sees them: a JSON schema (from
``response_format``, a tool's ``parameters``, ``text.format`` of the Responses API), a regex, a list of choices or a
grammar becomes an ``engine.protocol.StructuredOutput``, or a 400 naming the param.

Cheap checks first (size, depth, number of properties and enum items, references, a valid Draft 2020-12 schema,
the schema features xgrammar enforces), then the one that costs: the constraint compiled as vLLM's xgrammar
backend compiles it, in a worker process (``gateway.inference.grammar_check``), within a time budget. A constraint
that does not compile in time is refused (``structured_output_too_complex``) before it can hold the engine's
grammar compiler for every tenant. The verdict, ok or the error, is cached per canonical constraint (LRU): the same
schema sent again costs a dictionary lookup, and checks of the same constraint in flight share one compile.
Compiles run a few at a time (``gateway.inference.grammar_pool``).

vLLM's ``auto`` backend sends a schema xgrammar does not support to llguidance; this server refuses such a schema
instead, naming the feature, so that what runs in the engine is the grammar checked here."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from engine.protocol import StructuredKind, StructuredOutput
from gateway.errors import InvalidRequestError
from gateway.inference.grammar_check import Verdict
from gateway.inference.grammar_pool import GrammarPool
from gateway.inference.schema_features import unsupported_feature

Requested = tuple[str, StructuredKind, Any]
"""A constraint as a request asked for it: the param that carries it, its kind and its value (a schema as a dict,
a regex or grammar as a string, choices as a list of strings, ``True`` for any JSON object)."""


@dataclass(frozen=True)
class StructuredLimits:
    max_bytes: int = 64 * 1024
    """A schema, regex or grammar, serialised."""
    max_depth: int = 32
    """Nesting of a JSON schema's objects and arrays."""
    max_properties: int = 1024
    """Properties of all the objects of a schema together."""
    max_enum_items: int = 2048
    """Items of all the ``enum`` lists of a schema together, or choices of a choice list."""
    cache_size: int = 1024
    """Constraints remembered with their verdict."""


class StructuredOutputs:
    """Turns client constraints into checked ``StructuredOutput`` values (one per app, shared by all tenants),
    compiled in ``compiler``."""

    def __init__(self, compiler: GrammarPool, limits: StructuredLimits | None = None) -> None:
        self._compiler = compiler
        self._limits = limits or StructuredLimits()
        self._checked: OrderedDict[StructuredOutput, Verdict] = OrderedDict()
        self._in_flight: dict[StructuredOutput, asyncio.Future[Verdict]] = {}

    async def requested(self, wanted: Requested | None) -> StructuredOutput | None:
        """The constraint a request asked for (see ``Requested``), checked; None for none."""
        if wanted is None:
            return None
        param, kind, value = wanted
        if kind == "json":
            return await self.json_schema(value, param)
        if kind == "choice":
            if len(value) > self._limits.max_enum_items:
                raise InvalidRequestError(
                    f"The choice list has {len(value)} items; this server takes at most {self._limits.max_enum_items}.",
                    param=param,
                    code="structured_output_too_large",
                )
            spec = json.dumps(value, ensure_ascii=False)
        else:
            spec = "" if kind == "json_object" else value
        return await self.constraint(StructuredOutput(kind, spec), param)

    async def json_schema(self, schema: Any, param: str) -> StructuredOutput:
        """A JSON schema (a dict, as the client sent it) as a constraint; a 400 naming ``param`` if it is not one we
        take."""
        if not isinstance(schema, dict):
            raise InvalidRequestError("A JSON schema must be an object.", param=param, code="invalid_json_schema")
        _check_shape(schema, self._limits, param)
        spec = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return await self.constraint(StructuredOutput("json", spec), param)

    async def constraint(self, structured: StructuredOutput, param: str) -> StructuredOutput:
        """Any constraint (``json``, ``json_object``, ``regex``, ``choice``, ``grammar``), checked once."""
        size = len(structured.spec.encode())
        if size > self._limits.max_bytes:
            raise InvalidRequestError(
                f"The {_what(structured.kind)} is {size} bytes; this server takes at most {self._limits.max_bytes}.",
                param=param,
                code="structured_output_too_large",
            )
        if structured in self._checked:
            self._checked.move_to_end(structured)
            verdict = self._checked[structured]
        else:
            verdict = await self._verdict(structured)
        if verdict is None:
            return structured
        problem, message = verdict
        if problem == "too_complex":
            raise InvalidRequestError(
                f"The {_what(structured.kind)} is too complex: {message}, above this server's budget of "
                f"{self._compiler.budget:g} s.",
                param=param,
                code="structured_output_too_complex",
            )
        code = "invalid_json_schema" if structured.kind == "json" else "invalid_structured_output"
        raise InvalidRequestError(f"The {_what(structured.kind)} cannot be enforced: {message}", param=param, code=code)

    async def _verdict(self, structured: StructuredOutput) -> Verdict:
        """The cheap problems, else the compile check's verdict: one compile for concurrent checks of the same
        constraint, which goes on (and is remembered) if the request that started it goes away."""
        verdict = _cheap_problem(structured)
        if verdict is not None:
            self._remember(structured, verdict)
            return verdict
        task = self._in_flight.get(structured)
        if task is None:
            task = self._in_flight[structured] = asyncio.ensure_future(self._compile(structured))
        return await asyncio.shield(task)

    async def _compile(self, structured: StructuredOutput) -> Verdict:
        try:
            verdict = await self._compiler.verdict(structured.kind, structured.spec)
        finally:
            del self._in_flight[structured]
        self._remember(structured, verdict)
        return verdict

    def _remember(self, structured: StructuredOutput, verdict: Verdict) -> None:
        self._checked[structured] = verdict
        if len(self._checked) > self._limits.cache_size:
            self._checked.popitem(last=False)


def _what(kind: StructuredKind) -> str:
    return {"json": "JSON schema", "json_object": "JSON object", "regex": "regex", "choice": "choice list"}.get(
        kind, "grammar"
    )


def _check_shape(schema: dict[str, Any], limits: StructuredLimits, param: str) -> None:
    """Depth, properties and enum items, counted in one walk of the schema."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    properties = enum_items = 0
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise InvalidRequestError(
                f"The JSON schema nests deeper than {limits.max_depth} levels.", param=param, code="invalid_json_schema"
            )
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                properties += len(node["properties"])
            if isinstance(node.get("enum"), list):
                enum_items += len(node["enum"])
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    for count, limit, what in (
        (properties, limits.max_properties, "properties"),
        (enum_items, limits.max_enum_items, "enum items"),
    ):
        if count > limit:
            raise InvalidRequestError(
                f"The JSON schema has {count} {what}; this server takes at most {limit}.",
                param=param,
                code="structured_output_too_large",
            )


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


def _cheap_problem(structured: StructuredOutput) -> Verdict:
    """What is wrong with a constraint that a look tells, or None."""
    if structured.kind == "regex" and "\x00" in structured.spec:
        return "invalid", "a regex must not contain a NUL character"
    if structured.kind == "choice" and structured.spec == "[]":
        return "invalid", "the choice list is empty"
    if structured.kind == "grammar" and not structured.spec.strip():
        return "invalid", "the grammar is empty"
    if structured.kind != "json":
        return None
    schema = json.loads(structured.spec)
    remote = [ref for ref in _refs(schema) if not ref.startswith("#")]
    if remote:
        return "invalid", f"it refers to '{remote[0][:200]}': only references inside the schema ('#/...') are allowed"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return "invalid", f"it is not a valid JSON schema: {exc.message[:500]}"
    feature = unsupported_feature(schema)
    if feature is not None:
        return "invalid", f"{feature} is not supported by this server's structured-output backend (xgrammar)"
    return None
