"""``{{item.x}}`` and ``{{sample.output_text}}``: the template variables of eval inputs and graders.

A variable names a namespace (``item``, ``sample``) and a dotted path into it; its value is inserted as text
(strings as they are, anything else as JSON). A variable that names nothing, or a rendering longer than
``MAX_RENDERED_CHARS`` (a template repeating a large value: far past any model's context), is an error for that
item, raised before the text is built."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_RENDERED_CHARS = 1 << 20
_VARIABLE = re.compile(r"\{\{\s*(item|sample)((?:\.[A-Za-z0-9_\-]+)+)\s*\}\}")


class TemplateError(ValueError):
    """A template variable that names nothing in the item or the sample."""


def variables(template: str) -> list[tuple[str, str]]:
    """The (namespace, dotted path) of each variable in ``template``."""
    return [(match.group(1), match.group(2)[1:]) for match in _VARIABLE.finditer(template)]


def render(template: str, namespaces: dict[str, dict[str, Any]]) -> str:
    length = len(template)

    def value(match: re.Match[str]) -> str:
        nonlocal length
        found: Any = namespaces.get(match.group(1))
        path = match.group(2)[1:]
        for part in path.split("."):
            if not isinstance(found, dict) or part not in found:
                raise TemplateError(f"{match.group(1)}.{path} is not in the {match.group(1)}")
            found = found[part]
        text = found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)
        length += len(text) - len(match.group(0))
        if length > MAX_RENDERED_CHARS:
            raise TemplateError(f"the rendered text is longer than {MAX_RENDERED_CHARS:,} characters")
        return text

    return _VARIABLE.sub(value, template)
