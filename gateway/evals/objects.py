"""Evals, runs and output items in OpenAI's object shapes (the models of ``schemas``, built from their rows), the
tallies of a run's graded items, and the ids of output items (which tell nothing of other runs or tenants)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Any

from adapters.api_objects import epoch
from gateway.db import Eval, EvalRun, EvalRunItem
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.evals.recipe import ItemStatus
from gateway.evals.schemas import (
    CriterionResult,
    CustomDataSourceConfigOut,
    EvalOut,
    EvalRunOut,
    OutputItemOut,
    ResultCounts,
    StoredCompletionsDataSourceConfigOut,
)


def eval_object(row: Eval) -> EvalOut:
    properties: dict[str, Any] = {"item": row.item_schema}
    required = ["item"]
    if row.include_sample_schema:
        properties["sample"] = {"type": "object", "properties": {"output_text": {"type": "string"}}}
        required.append("sample")
    schema = {"type": "object", "properties": properties, "required": required}
    stored = row.stored_completions
    config = (
        CustomDataSourceConfigOut(schema=schema)
        if stored is None
        else StoredCompletionsDataSourceConfigOut(metadata=stored.get("metadata"), schema=schema)
    )
    return EvalOut(
        id=row.id,
        name=row.name,
        data_source_config=config,
        testing_criteria=row.testing_criteria,
        created_at=epoch(row.created_at),
        metadata=row.user_metadata,
    )


def run_object(row: EvalRun, counts: dict[str, int], per_criteria: list[dict[str, Any]]) -> EvalRunOut:
    """The run as the API shows it, with these counts (those recorded when it ended, or its items' so far)."""
    results = [CriterionResult.model_validate(result) for result in per_criteria]
    update = {"result_counts": ResultCounts.model_validate(counts), "per_testing_criteria_results": results}
    return EvalRunOut.model_validate(row).model_copy(update=update)


def output_item_object(row: EvalRunItem, run: EvalRun) -> OutputItemOut:
    return OutputItemOut(
        id=output_item_id(run.id, row.position),
        run_id=run.id,
        eval_id=run.eval_id,
        created_at=epoch(row.created_at),
        status=row.status,
        datasource_item_id=row.position,
        datasource_item=row.item,
        results=row.results or [],
        sample=row.sample,
    )


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
