"""Evals, runs and output items in OpenAI's object shapes, the tallies of a run's graded items, pages of them, and
the ids of output items (which tell nothing of other runs or tenants)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from gateway.db import Eval, EvalRun, EvalRunItem
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.recipe import ItemStatus


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def eval_object(row: Eval) -> dict[str, Any]:
    properties: dict[str, Any] = {"item": row.item_schema}
    required = ["item"]
    if row.include_sample_schema:
        properties["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
        required.append("sample")
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "data_source_config": {
            "type": "custom",
            "schema": {"type": "object", "properties": properties, "required": required},
        },
        "testing_criteria": row.testing_criteria,
        "created_at": _epoch(row.created_at),
        "metadata": row.user_metadata,
    }


def run_object(row: EvalRun, counts: dict[str, int], per_criteria: list[dict[str, Any]]) -> dict[str, Any]:
    usage = row.usage or {}
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "name": row.name,
        "model": row.model,
        "status": row.status,
        "created_at": _epoch(row.created_at),
        "data_source": row.data_source,
        "error": row.error,
        "result_counts": counts,
        "per_testing_criteria_results": per_criteria,
        "per_model_usage": [
            {
                "model_name": row.model,
                "invocation_count": usage.get("invocation_count", 0),
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "completion_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0),
                "cached_tokens": 0,
            }
        ]
        if usage.get("invocation_count")
        else [],
        "report_url": f"/v1/evals/{row.eval_id}/runs/{row.id}",
        "metadata": row.user_metadata,
    }


def output_item_object(row: EvalRunItem, run: EvalRun) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": output_item_id(run.id, row.position),
        "run_id": run.id,
        "eval_id": run.eval_id,
        "created_at": _epoch(row.created_at),
        "status": row.status,
        "datasource_item_id": row.position,
        "datasource_item": row.item,
        "results": row.results or [],
        "sample": row.sample,
    }


def tally(
    rows: list[tuple[str, list[dict[str, Any]] | None]], criteria: list[str]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Result counts and per-criterion passes from (status, results) of a run's graded items."""
    statuses = Counter(status for status, _ in rows)
    counts = {
        "total": sum(statuses.values()),
        "passed": statuses[ItemStatus.PASS],
        "failed": statuses[ItemStatus.FAIL],
        "errored": statuses[ItemStatus.ERROR],
    }
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for _, results in rows:
        for result in results or []:
            (passed if result["passed"] else failed)[result["name"]] += 1
    per_criteria = [{"testing_criteria": name, "passed": passed[name], "failed": failed[name]} for name in criteria]
    return counts, per_criteria


def page(
    session: Session, query: Select[Any], key: InstrumentedAttribute[Any], after: Any, limit: int, descending: bool
) -> tuple[list[Any], bool]:
    if after is not None:
        query = query.where(key < after if descending else key > after)
    rows = list(session.scalars(query.order_by(key.desc() if descending else key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


_TAG_BYTES = 12
_OUTPUT_ITEM_ID = re.compile(rf"outputitem_([0-9a-f]{{{2 * _TAG_BYTES}}})([0-9a-f]{{1,8}})")


def output_item_id(run_id: str, position: int) -> str:
    """An output item's id: its position in its run under a tag only the run's own (random) id yields, so it is as
    unguessable as the run's id and tells nothing of other runs or tenants (no global sequence)."""
    return f"outputitem_{_tag(run_id, position)}{position:x}"


def _tag(run_id: str, position: int) -> str:
    return hashlib.blake2b(f"{run_id}/{position}".encode(), digest_size=_TAG_BYTES).hexdigest()


def item_position(value: str, run_id: str, param: str) -> int:
    """The position an output item id of this run names; any other id is a 404 (``after``: a 400)."""
    match = _OUTPUT_ITEM_ID.fullmatch(value)
    if match is None or match.group(1) != _tag(run_id, int(match.group(2), 16)):
        error = NotFoundError if param == "output_item_id" else InvalidRequestError
        raise error(f"No output item of this run has the id '{value[:60]}'.", param=param)
    return int(match.group(2), 16)
