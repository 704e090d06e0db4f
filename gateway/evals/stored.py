"""A run's items picked from the tenant's stored chat completions (``source: {"type": "stored_completions"}``):
the completions with all of the source's filters and the eval's ``metadata``, the newest ``limit`` (at most
``bounds.EVAL_RUN_ITEMS``, within ``bounds.EVAL_RUN_BYTES`` in all), oldest first. Each item holds a completion's
``id``, ``model``, ``input`` (its messages as text) and ``metadata``; its sample is the stored answer
(``output_text``, ``model``, ``finish_reason``, ``usage``), graded as it is unless the run re-samples the items with
``input_messages``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gateway import bounds
from gateway.errors import InvalidRequestError
from gateway.evals.items import Item
from gateway.evals.models import StoredCompletionsSource
from gateway.stored_completions.store import CompletionStore, Kept, Selection

STORED_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "model": {"type": "string"},
        "input": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
                "required": ["role", "content"],
            },
        },
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["id", "model", "input", "metadata"],
}
_PARAM = "data_source.source"


def stored_items(
    store: CompletionStore, tenant_id: str, source: StoredCompletionsSource, config: dict[str, Any] | None
) -> list[Item]:
    """Blocking: the run's items and samples for an eval made over stored completions (``config``: its
    ``stored_completions`` data source config; None: a ``custom`` eval, whose items these are not: a 400), a 400
    when none match, or when they pass a run's bounds."""
    if config is None:
        raise InvalidRequestError(
            "A stored_completions source needs an eval made with data_source_config type stored_completions (its "
            "items have the shape of a stored completion, not of this eval's item schema).",
            param=_PARAM,
        )
    selection = Selection(
        model=source.model,
        metadata={**(config.get("metadata") or {}), **(source.metadata or {})},
        created_after=_moment(source.created_after),
        created_before=_moment(source.created_before),
        limit=source.limit or bounds.EVAL_RUN_ITEMS,
    )
    items: list[Item] = []
    size = 0
    for kept in store.select(tenant_id, selection):
        item, sample = _item(kept), _sample(kept)
        size += len(json.dumps([item, sample], ensure_ascii=False).encode())
        if size > bounds.EVAL_RUN_BYTES:
            raise InvalidRequestError(
                f"The stored completions picked hold more than {bounds.EVAL_RUN_BYTES} bytes; a run takes at most "
                "that. Narrow the source (metadata, created_after, limit).",
                param=_PARAM,
            )
        items.append((item, sample))
    if not items:
        raise InvalidRequestError("No stored chat completion matches the run's source.", param=_PARAM)
    items.reverse()
    return items


def _moment(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def _item(kept: Kept) -> dict[str, Any]:
    messages = []
    for message in kept.request["messages"]:
        content = message.get("content") or ""
        text = content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
        messages.append({"role": message["role"], "content": text})
    return {"id": kept.id, "model": kept.completion["model"], "input": messages, "metadata": kept.metadata or {}}


def _sample(kept: Kept) -> dict[str, Any]:
    [first, *_] = kept.completion["choices"]
    return {
        "output_text": first["message"].get("content") or "",
        "model": kept.completion["model"],
        "finish_reason": first["finish_reason"],
        "usage": kept.completion["usage"],
    }
