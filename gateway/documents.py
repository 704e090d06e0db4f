"""JSON documents a tenant hands us (eval item schemas, eval items and samples, JSONL lines): how large and how
deep they may be, and how a tenant's JSON schema is compiled and run so that it reaches nothing but itself.

* Shape: every document is walked iteratively and refused past ``bounds.DOCUMENT_DEPTH`` levels or its count of
  values, never by a ``RecursionError``.
* References: a schema's ``$ref`` and ``$dynamicRef`` may only point into the schema itself (``#...``) and must
  resolve; the schema's registry retrieves nothing, so no URL, file or URN is ever fetched or opened. A nested
  ``$id`` (a second resource) and a nested ``$schema`` (another dialect, another validator) are refused.
* Regexes: ``pattern`` and ``patternProperties`` (also as ``additionalProperties`` sees them) run on RE2, a
  linear-time engine; a pattern RE2 cannot compile (backreferences, lookarounds) is refused.
  ``unevaluatedProperties`` beside ``patternProperties`` is refused (jsonschema would match those in ``re``).
* Time: validation runs under a deadline (``validate_items``) that every keyword checks, so a schema whose
  combinators multiply (``anyOf`` of ``$ref: "#"`` ...) stops with :class:`BudgetExceeded`. It is meant to run in
  a worker process (``gateway.workers``), off the event loop."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

import re2
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import Draft202012Validator, SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from gateway import bounds

DIALECTS = ("https://json-schema.org/draft/2020-12/schema", "https://json-schema.org/draft/2020-12/schema#")
_REFERENCES = ("$ref", "$dynamicRef")
_deadline: ContextVar[float] = ContextVar("schema_deadline", default=math.inf)


class DocumentError(ValueError):
    """A document we refuse (a 400): the message says which bound or rule, never any fetched content."""


class BudgetExceeded(Exception):
    """Validation ran past its deadline."""


# -- shape -----------------------------------------------------------------------------------------------------------


def check_shape(value: Any, *, max_nodes: int, what: str) -> int:
    """The count of values in ``value`` (each object, array, key... counts one); refuses more than ``max_nodes`` or
    a nesting deeper than ``bounds.DOCUMENT_DEPTH``."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    nodes = 0
    while pending:
        item, depth = pending.pop()
        nodes += 1
        if nodes > max_nodes:
            raise DocumentError(f"{what} holds more than {max_nodes} values.")
        if isinstance(item, dict | list):
            if depth >= bounds.DOCUMENT_DEPTH:
                raise DocumentError(f"{what} is nested more than {bounds.DOCUMENT_DEPTH} levels deep.")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return nodes


# -- regexes ---------------------------------------------------------------------------------------------------------


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 * 1024 * 1024
    return options


_RE2_OPTIONS = _options()


@lru_cache(maxsize=1024)
def regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2; a pattern RE2 refuses (or that would take too much memory) is a
    :class:`DocumentError`."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise DocumentError(
            f"The pattern {pattern[:100]!r} is not supported ({reason[:100]}): patterns run on RE2, which has "
            "no backreferences or lookarounds."
        ) from None


def _pattern(validator: Validator, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not regex(pattern).search(instance):
        yield ValidationError(f"{instance[:100]!r} does not match {pattern[:100]!r}")


def _pattern_properties(
    validator: Validator, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if regex(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)  # type: ignore[attr-defined]  # the stubs' Validator lacks descend


def _additional_properties(
    validator: Validator, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = [regex(pattern) for pattern in schema.get("patternProperties", {})]
    extras = [key for key in instance if key not in known and not any(p.search(key) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)  # type: ignore[attr-defined]  # the stubs' Validator lacks descend
    elif not additional and extras:
        names = ", ".join(repr(extra[:100]) for extra in sorted(extras)[:10])
        yield ValidationError(f"Additional properties are not allowed ({names} unexpected)")


def _timed(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def checked(validator: Validator, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        if time.monotonic() > _deadline.get():
            raise BudgetExceeded
        return keyword(validator, value, instance, schema)

    return checked


_KEYWORDS = {
    **Draft202012Validator.VALIDATORS,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}
TenantValidator = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {name: _timed(keyword) for name, keyword in _KEYWORDS.items()}
)
"""Draft 2020-12 with RE2 for every regex and a deadline on every keyword."""


# -- schemas ---------------------------------------------------------------------------------------------------------


def _retrieve_nothing(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


def _registry(schema: dict[str, Any]) -> referencing.jsonschema.SchemaRegistry:
    """Only the schema itself; anything else is unresolvable, and nothing is ever retrieved."""
    resource = referencing.jsonschema.DRAFT202012.create_resource(schema)
    registry = referencing.Registry(retrieve=_retrieve_nothing)  # type: ignore[call-arg]
    return registry.with_resource(resource.id() or "", resource)  # type: ignore[no-any-return]


def _objects(schema: Any) -> Iterator[tuple[dict[str, Any], bool]]:
    """Every object in the schema (keywords and data alike: a check that also meets data is only stricter), with
    whether it is the root."""
    pending: list[tuple[Any, bool]] = [(schema, True)]
    while pending:
        item, root = pending.pop()
        if isinstance(item, dict):
            yield item, root
            pending.extend((child, False) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, False) for child in item)


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A tenant's JSON schema, refused (:class:`DocumentError`) unless it is bounded, valid Draft 2020-12, refers
    only into itself and uses only regexes RE2 runs."""
    check_shape(schema, max_nodes=bounds.SCHEMA_NODES, what="The schema")
    if len(json.dumps(schema, ensure_ascii=False)) > bounds.SCHEMA_BYTES:
        raise DocumentError(f"The schema is longer than {bounds.SCHEMA_BYTES} characters.")
    try:  # no format checks here: the metaschema's "regex" format would compile patterns in Python's re
        Draft202012Validator.check_schema(schema, format_checker=None)  # type: ignore[arg-type]
    except SchemaError as exc:
        raise DocumentError(f"not a valid JSON schema: {exc.message[:300]}") from None
    resolver = _registry(schema).resolver(base_uri=referencing.jsonschema.DRAFT202012.id_of(schema) or "")
    patterns_used = False
    for node, root in _objects(schema):
        for keyword in _REFERENCES:
            target = node.get(keyword)
            if isinstance(target, str):
                _check_reference(resolver, keyword, target)
        if not root and isinstance(node.get("$id"), str):
            raise DocumentError("$id is only allowed at the schema's root (the schema is one document).")
        if isinstance(node.get("$schema"), str) and (not root or node["$schema"] not in DIALECTS):
            raise DocumentError(f"$schema may only name {DIALECTS[0]}, at the schema's root.")
        if isinstance(node.get("pattern"), str):
            regex(node["pattern"])
        if isinstance(node.get("patternProperties"), dict):
            patterns_used = True
            for pattern in node["patternProperties"]:
                regex(pattern)
    if patterns_used and any("unevaluatedProperties" in node for node, _ in _objects(schema)):
        raise DocumentError("unevaluatedProperties cannot be combined with patternProperties here.")
    return schema


def _check_reference(resolver: referencing._core.Resolver[Any], keyword: str, target: str) -> None:
    shown = target[:100]
    if not target.startswith("#"):
        raise DocumentError(
            f"{keyword} {shown!r} points outside the schema; only references into the schema itself "
            "('#/$defs/...', '#anchor') are allowed."
        )
    try:
        resolver.lookup(target)
    except (referencing.exceptions.Unresolvable, ValueError, LookupError, TypeError):  # "#/allOf/x" into a list
        raise DocumentError(f"{keyword} {shown!r} does not resolve to anything in the schema.") from None


@lru_cache(maxsize=64)
def _validator(schema_text: str) -> Validator:
    schema = json.loads(schema_text)
    # A root $schema (only 2020-12 passes the check) would make jsonschema switch, on a "$ref": "#" back to the
    # root, to its stock validator for that dialect: Python's re and no deadline. The dialect is ours already.
    schema.pop("$schema", None)
    validator: Validator = TenantValidator(schema, registry=_registry(schema))
    return validator


def validate_items(schema: dict[str, Any], items: list[Any], seconds: float) -> tuple[int, str] | None:
    """The index and reason of the first item the (checked) schema refuses, or None; raises
    :class:`BudgetExceeded` past ``seconds``. For a worker process."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    token = _deadline.set(time.monotonic() + seconds)
    try:
        for index, item in enumerate(items):
            try:
                problem = next(iter(validator.iter_errors(item)), None)
            except RecursionError:  # {"$ref": "#"}: a schema that refers to itself without consuming the item
                return index, "the schema refers to itself without end"
            if problem is not None:
                return index, problem.message[:300]
        return None
    finally:
        _deadline.reset(token)
