"""The JSON-schema features that vLLM's xgrammar backend does not enforce (the list of vLLM's
``has_xgrammar_unsupported_json_features``, xgrammar 0.2), named: with them, vLLM's ``auto`` backend would leave
xgrammar for another backend, or xgrammar would ignore the keyword and let through output the schema forbids."""

from __future__ import annotations

from typing import Any

STRING_FORMATS = frozenset(
    {
        "email",
        "date",
        "time",
        "date-time",
        "duration",
        "ipv4",
        "ipv6",
        "hostname",
        "uuid",
        "uri",
        "uri-reference",
        "uri-template",
        "json-pointer",
        "relative-json-pointer",
    }
)
"""The string formats xgrammar enforces."""


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    return {item for item in kind if isinstance(item, str)} if isinstance(kind, list) else set()


def _bounded_pattern(node: dict[str, Any]) -> bool:
    return ("pattern" in node or "format" in node) and ("minLength" in node or "maxLength" in node)


def _feature_of(node: dict[str, Any]) -> str | None:
    """The unsupported feature of this node itself (not of its children), or None."""
    types = _types(node)
    if types & {"integer", "number"} and "multipleOf" in node:
        return "'multipleOf'"
    if "array" in types:
        for keyword in ("uniqueItems", "contains", "minContains", "maxContains"):
            if keyword in node:
                return f"'{keyword}'"
    if "string" in types:
        if "format" in node and node["format"] not in STRING_FORMATS:
            return f"the string format '{str(node['format'])[:100]}'"
        if _bounded_pattern(node):
            return "'minLength'/'maxLength' together with 'pattern' or 'format'"
    if "object" in types:
        names = node.get("propertyNames")
        if "propertyNames" in node:
            if isinstance(names, dict) and _bounded_pattern(names):
                return "'propertyNames' with a length bound"
            for other in ("patternProperties", "properties"):
                if other in node:
                    return f"'propertyNames' together with '{other}'"
            if node.get("unevaluatedProperties", True) is not True:
                return "'propertyNames' together with 'unevaluatedProperties'"
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and ("properties" in node or len(patterns) > 1):
            return "'patternProperties' together with 'properties' or several patterns"
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) >= 2:
        return "'allOf' with several schemas"
    return None


def unsupported_feature(schema: dict[str, Any]) -> str | None:
    """The first feature of ``schema`` (anywhere in it) that xgrammar does not enforce, named; None if none."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            feature = _feature_of(node)
            if feature is not None:
                return feature
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None
